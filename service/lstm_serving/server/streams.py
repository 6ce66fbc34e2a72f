"""Both streaming RPCs' pipeline: messages checked and queued as they are read, answered in
order as their rows come back.

A reader task decodes, checks and submits each message as it arrives, so the messages of a
stream batch together (and with everyone else's); the handler's own task writes the answers in
order, awaiting the batcher's futures. No task per message. Read-ahead is bounded in messages
(STREAM_IN_FLIGHT) and in bytes (STREAM_READ_AHEAD_BYTES of the stream's share of the answer
budget): a client that sends faster than it reads its answers is slowed down by gRPC flow
control instead of growing the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message

from lstm_serving.core.dataplane import Pending, Reserve
from lstm_serving.errors import QueueFull
from lstm_serving.server.budget import Share

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]

STREAM_IN_FLIGHT = 256  # messages of one stream read ahead of their answers
# Bytes of requests read and answers not yet sent that one stream may hold before it stops
# reading, so a client that never reads holds little (docs/decisions.md).
STREAM_READ_AHEAD_BYTES = 1 << 20

M = TypeVar("M")  # a request message (or the Undecodable that stands for one)
R = TypeVar("R", bound=Message)  # an answer


class CallFailed(Exception):
    """A call (or one message of a stream) failed with this status, already counted and logged;
    how the caller hears it is the RPC's own: an abort, or an error message on the stream."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


async def sent(context: Context, response: Message) -> bool:
    """Writes one answer of a stream; False when it cannot be (the caller has gone: gRPC
    marks the call cancelled only a moment later), which ends the stream quietly. An answer
    yielded to such a stream makes gRPC log a traceback instead."""
    try:
        await context.write(response)
    except Exception as exc:  # gRPC's own ExecuteBatchError, not a public type
        log.debug("a stream's answer could not be sent, its caller has gone: %r", exc)
        return False
    return True


class ReadAhead:
    """What a stream holds for its caller, taken from its connection's answer budget (`share`);
    `room()` waits while it is over the stream's read-ahead limit."""

    def __init__(self, share: Share, limit: int = STREAM_READ_AHEAD_BYTES) -> None:
        self._share, self._limit = share, limit
        self._below = asyncio.Event()
        self._below.set()

    @property
    def size(self) -> int:
        return self._share.size

    def hold(self, input_bytes: int, answer_bytes: int) -> None:
        """The data plane's `Reserve`: the share's, or the budget's ResourceExhausted."""
        self._share.hold(input_bytes, answer_bytes)
        if self._share.size >= self._limit:
            self._below.clear()

    def release(self, size: int | None = None) -> None:
        """Gives back `size` bytes, or everything the stream holds."""
        self._share.release(size)
        if self._share.size < self._limit:
            self._below.set()

    async def room(self) -> None:
        await self._below.wait()


@dataclass(slots=True)
class Accepted(Generic[R]):
    """One message read and not yet answered."""

    work: Pending | R | CallFailed  # its answer on its way, its ready answer, or its failure
    echoed: tuple[str, ...] = ()  # what its answer repeats of it (v2: id, model, version)
    reserved: int = 0  # bytes it holds of the stream's read-ahead until its answer is sent
    started: float = 0.0  # time.perf_counter() when it was read


async def answer_in_order(
    context: Context,
    messages: AsyncIterator[M],
    accept: Callable[[M, Reserve, bool], Accepted[R]],
    answer: Callable[[Accepted[R]], Awaitable[R]],
    held: ReadAhead,
) -> None:
    """Reads `messages`, `accept`ing each as it comes (without an await: decode, check, submit,
    reserving through `held`), and writes `answer(accepted)` for each in order. Returns when
    the messages end or the caller has gone; raises what `answer` or the read raises (the
    stream's end), with everything still queued cancelled: a step of a server-held sequence
    that has not started then never runs.

    `accept(message, reserve, alone)` raises QueueFull only when not `alone` (this stream has
    earlier messages unanswered) and the model's queue is half full: the reader then waits for
    the queue's next batch and tries again. So what a stream reads ahead never gets it, or
    another caller, refused; a message with nothing of its stream before it is refused as a
    unary call would be."""
    pending: asyncio.Queue[Accepted[R] | None] = asyncio.Queue(STREAM_IN_FLIGHT)
    unanswered = 0  # messages accepted whose answers are not yet sent

    async def read() -> None:
        nonlocal unanswered
        try:
            async for message in messages:
                started, before = time.perf_counter(), held.size
                while True:
                    try:
                        accepted = accept(message, held.hold, not unanswered)
                        break
                    except QueueFull as full:  # not alone: wait for room, not refused
                        await full.room()
                accepted.reserved, accepted.started = held.size - before, started
                unanswered += 1
                try:
                    await pending.put(accepted)  # waits while STREAM_IN_FLIGHT are queued
                except asyncio.CancelledError:  # the stream ended meanwhile
                    _cancel(accepted)
                    raise
                await held.room()
        finally:  # a failed read ends the stream (re-raised by `await reader`)
            await pending.put(None)

    reader = asyncio.ensure_future(read())
    try:
        while (accepted := await pending.get()) is not None:
            if not await sent(context, await answer(accepted)):
                return
            held.release(accepted.reserved)
            unanswered -= 1
        await reader
    finally:
        held.release()
        reader.cancel()
        while not pending.empty():
            leftover = pending.get_nowait()
            if leftover is not None:
                _cancel(leftover)
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await reader


def _cancel(accepted: Accepted[Any]) -> None:
    """An answer no longer wanted: its queued rows are skipped, its sequence step never runs."""
    if isinstance(accepted.work, Pending):
        accepted.work.cancel()
