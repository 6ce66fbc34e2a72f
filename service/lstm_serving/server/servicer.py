"""The servicer base both protocols share: per-call metrics, stream limits, answering errors.

Both protocols' servicers derive from `ObservedServicer` and wrap their unary handlers in
`answers_errors`; the streaming handlers (`streams`) record each message through the same
methods. The status a failure gets comes from `status`.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, ClassVar, TypeVar

import grpc
from google.protobuf.message import Message
from prometheus_client import Counter, Histogram

from lstm_serving.core.dataplane import DataPlane, Reserve
from lstm_serving.core.metrics import Metrics
from lstm_serving.core.requests import Caller
from lstm_serving.errors import DeadlineExceeded, QueueFull, ResourceExhausted
from lstm_serving.server.budget import AnswerBudget, Share
from lstm_serving.server.overdue import Overdue
from lstm_serving.server.registration import Undecodable, decoded
from lstm_serving.server.status import LOGGED, ThrottledLog, status_of
from lstm_serving.server.streams import (
    Accepted,
    CallFailed,
    Context,
    ReadAhead,
    answer_in_order,
)

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp", bound=Message)
Handler = Callable[[Any, Req, Context], Awaitable[Resp]]


def caller_of(context: Context) -> Caller:
    """Who is calling: as owner of server-held sequences, a fingerprint of its bearer token
    ("" without one; the token itself is never kept); for per-caller limits, that or without
    a token the host it connects from (callers behind one proxy share the proxy's)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value if isinstance(value, str) else value.decode("latin-1")
            owner = hashlib.sha256(text.encode()).hexdigest()[:32]
            return Caller(owner, owner)
    peer = context.peer() or ""  # ipv4:10.0.0.7:51234, ipv6:[::1]:51234, unix:...
    host = peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer
    return Caller("", host)


def deadline_of(context: Context) -> float | None:
    """The caller's deadline on the time.monotonic() clock, if it set one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class OpenStreams:
    """Streams open on this server, both protocols together: how many may be (--max-streams),
    how many one caller may hold (--max-streams-per-caller), and how long one may wait for its
    next message (--stream-idle-timeout)."""

    def __init__(self, limit: int, per_caller: int = 256, idle_timeout: float = 0.0) -> None:
        self.limit, self.count = limit, 0
        self.per_caller, self.by_caller = per_caller, collections.Counter[str]()
        self._idle = Overdue(idle_timeout)

    async def messages(self, requests: AsyncIterator[Req]) -> AsyncIterator[Req]:
        """A stream's messages; DeadlineExceeded once none comes for the idle timeout, so an
        idle stream does not hold its place for ever."""
        iterator = aiter(requests)
        while True:
            try:
                message = await self._idle.wait(anext(iterator))
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise DeadlineExceeded(
                    f"no message for {self._idle.limit:g} s (--stream-idle-timeout): the "
                    "stream is ended; open a new one (a server-held sequence stays open until "
                    "its own idle timeout)"
                ) from None
            yield message


class ObservedServicer:
    """Base of both protocols' servicers: the data plane, and the per-call metrics."""

    # Per RPC: the request field that names the model, the response field with the version.
    LABEL_FIELDS: ClassVar[Mapping[str, tuple[str, str]]] = {}

    def __init__(
        self, dataplane: DataPlane, metrics: Metrics, streams: OpenStreams, budget: AnswerBudget
    ) -> None:
        self._dataplane = dataplane
        self._streams = streams
        self._budget = budget
        self._metrics = metrics
        self._log = ThrottledLog()
        # (model, version, rpc, code) -> its request counter and duration histogram; as many
        # as the label sets exported (unknown model names all count as one)
        self._children: dict[tuple[str, str, str, str], tuple[Counter, Histogram]] = {}

    def held_until_done(self, context: Context) -> Share:
        """A unary call's part of the answer budget, given back when the call ends: after its
        answer has been sent, which waits on the client's flow-control window."""
        share = self._budget.share(context.peer())
        # the stubs type the callback as a class only they define
        context.add_done_callback(lambda _: share.release())  # type: ignore[arg-type]
        return share

    async def open_stream(self, rpc: str, context: Context, of: Caller) -> None:
        """Takes one of --max-streams (and of its caller's --max-streams-per-caller) for a
        stream's life, or ends the call RESOURCE_EXHAUSTED; `close_stream` gives them back."""
        streams, caller = self._streams, of.counted_as
        refusal = None
        if streams.count >= streams.limit:
            refusal = ResourceExhausted(
                f"{streams.count} streams are open on this server, the limit (--max-streams): "
                "close one, or retry with backoff"
            )
        elif streams.by_caller[caller] >= streams.per_caller:
            refusal = ResourceExhausted(
                f"you hold {streams.by_caller[caller]} open streams, the limit per caller "
                "(--max-streams-per-caller): close one, or send more messages on each"
            )
        if refusal is not None:
            await context.abort(*self.failed(rpc, None, refusal, time.perf_counter()))
        streams.count += 1
        streams.by_caller[caller] += 1

    def close_stream(self, of: Caller) -> None:
        self._streams.count -= 1
        self._streams.by_caller[of.counted_as] -= 1
        if not self._streams.by_caller[of.counted_as]:
            del self._streams.by_caller[of.counted_as]

    async def answer_stream(
        self,
        rpc: str,
        requests: AsyncIterator[Req],
        context: Context,
        accept: Callable[[float | None, Caller, Req, Reserve, bool], Accepted[Resp]],
        answer: Callable[[Accepted[Resp]], Awaitable[Resp]],
    ) -> None:
        """A stream's life: its place among the open streams, and its messages read ahead,
        `accept`ed (with the call's deadline and caller) and answered in order (`streams`). An
        idle stream, or a CallFailed that `answer` raises, ends it with that status."""
        deadline, caller = deadline_of(context), caller_of(context)
        await self.open_stream(rpc, context, caller)
        try:
            await answer_in_order(
                context,
                self._streams.messages(requests),
                functools.partial(accept, deadline, caller),
                answer,
                ReadAhead(self._budget.share(context.peer())),
            )
        except CallFailed as failure:
            self.end_stream(context, (failure.code, failure.message))
        except DeadlineExceeded as idle:
            self.end_stream(context, self.failed(rpc, None, idle, time.perf_counter()))
        finally:
            self.close_stream(caller)

    @staticmethod
    def end_stream(context: Context, status: tuple[grpc.StatusCode, str]) -> None:
        """Ends a stream with `status` once its handler returns. Not an abort: gRPC keeps an
        abort's exception, and the stream's frames with it, until a garbage collection (see
        `answers_errors`)."""
        context.set_code(status[0])
        context.set_details(status[1])

    async def answered(self, rpc: str, request: Any, work: Callable[[], Awaitable[Resp]]) -> Resp:
        """The call path of every unary RPC: runs `work`, counts it; a failure is counted,
        logged as its status says, and raised as CallFailed. (An answer is never measured: an
        inference's size is checked from its shape before it runs, the rest are small.)"""
        started = time.perf_counter()
        try:
            response = await work()
        except Exception as exc:
            code, message = self.failed(rpc, request, exc, started)
            raise CallFailed(code, message) from exc
        self.record(rpc, request, response, grpc.StatusCode.OK, started)
        return response

    def record(
        self, rpc: str, request: Any, response: Any, code: grpc.StatusCode, started: float
    ) -> None:
        """Counts one answered call, labelled from its messages' fields (LABEL_FIELDS)."""
        model_field, version_field = self.LABEL_FIELDS.get(rpc, ("", ""))
        name = getattr(request, model_field, "") if model_field else ""
        version = (
            str(getattr(response, version_field)) if version_field and response is not None else ""
        )
        self.count(rpc, self._model_label(name), version, code, started)

    def _model_label(self, name: str) -> str:
        """A model name as a label: unknown names become "_unknown" (bounded labels)."""
        return "_unknown" if name and not self._dataplane.registry.has(name) else name

    def count(
        self, rpc: str, model: str, version: str, code: grpc.StatusCode, started: float
    ) -> None:
        """Counts one answered call under its labels (`model` known, or "_unknown")."""
        labels = (model, version, rpc, code.name)
        children = self._children.get(labels)
        if children is None:  # resolving a label set costs as much as counting with it
            children = self._children[labels] = (
                self._metrics.requests.labels(*labels),
                self._metrics.request_duration.labels(model, rpc),
            )
        children[0].inc()
        children[1].observe(time.perf_counter() - started)

    def refused_as_read(
        self, rpc: str, request: Any, exc: Exception, alone: bool
    ) -> tuple[grpc.StatusCode, str]:
        """The status of a stream's message refused as it is read, counted now. A QueueFull is
        raised again unless the message is `alone`: its stream waits for room instead
        (`streams.answer_in_order`)."""
        if isinstance(exc, QueueFull) and not alone:
            raise exc
        return self.failed(rpc, request, exc, time.perf_counter())

    def failed(
        self, rpc: str, request: Any, exc: Exception, started: float, model: str | None = None
    ) -> tuple[grpc.StatusCode, str]:
        """The status a failed call gets, counted under `model` (given when the request itself
        is no longer kept) or its request's model; internal faults, refusals and undecodable
        requests are logged at a rate limit (a caller's mistake otherwise is not logged)."""
        code, message = status_of(exc)
        if code == grpc.StatusCode.INTERNAL:
            self._log.line(logging.ERROR, code, rpc, message, exc)
        elif code in LOGGED or isinstance(request, Undecodable):
            self._log.line(logging.WARNING, code, rpc, message)
        if model is None:
            self.record(rpc, request, None, code, started)
        else:
            self.count(rpc, self._model_label(model), "", code, started)
        return code, message


async def _handle(
    handler: Handler[Req, Resp], servicer: ObservedServicer, request: Req, context: Context
) -> Resp:
    return await handler(servicer, decoded(request), context)


def answers_errors(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Turns a handler's exceptions into gRPC statuses (logging unexpected ones); records it."""

    @functools.wraps(handler)
    async def wrapper(self: ObservedServicer, request: Req, context: Context) -> Resp:
        try:
            return await self.answered(
                handler.__name__,
                request,
                functools.partial(_handle, handler, self, request, context),
            )
        except CallFailed as failure:
            status = failure.code, failure.message
        # gRPC keeps the abort's exception, whose traceback holds this frame, in a reference
        # cycle that only the garbage collector frees: a refused 16 MB request would outlive
        # its call by seconds, and a burst of them took hundreds of MB. So the request goes
        # first, and the abort is raised outside the except block (no chained CallFailed).
        del request
        await context.abort(*status)
        raise AssertionError("unreachable: abort raises")

    return wrapper
