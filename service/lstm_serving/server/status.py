"""The one mapping from errors to gRPC status codes, and the rate-limited log of refusals.

A caller sees the message of a `ServingError`; anything else is INTERNAL with a generic
message, its details going to the log only.
"""

from __future__ import annotations

import logging
import time

import grpc

from lstm_serving.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServingError,
    Unavailable,
)

log = logging.getLogger(__name__)

STATUS: dict[type[ServingError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Aborted: grpc.StatusCode.ABORTED,
}

# Logged (at a rate limit) because an operator acts on them: the server is full or stopping.
LOGGED = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


class ThrottledLog:
    """At most one line per status code every `interval` seconds, with how many were seen:
    a flood of bad or refused calls cannot flood the log."""

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._last: dict[grpc.StatusCode, float] = {}
        self._unlogged: dict[grpc.StatusCode, int] = {}

    def line(
        self,
        level: int,
        code: grpc.StatusCode,
        rpc: str,
        message: str,
        exc: BaseException | None = None,
    ) -> None:
        now = time.monotonic()
        count = self._unlogged.get(code, 0) + 1
        if now - self._last.get(code, -self._interval) < self._interval:
            self._unlogged[code] = count
            return
        self._last[code], self._unlogged[code] = now, 0
        log.log(
            level,
            "%s answered %s (%d since the last such line): %s",
            rpc,
            code.name,
            count,
            message,
            exc_info=exc,
        )


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller gets for `exc`; internals are never shown."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls], str(exc)
    return grpc.StatusCode.INTERNAL, "internal error (logged on the server)"
