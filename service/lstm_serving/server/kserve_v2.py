"""inference.GRPCInferenceService (KServe v2 / Open Inference Protocol, Triton's streaming).

Same port, same data plane and batchers as lstm.v1: a v2 request and an lstm.v1 request can
share one batch. Decode, one data-plane call, encode; errors map and are counted through
`ObservedServicer.failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import grpc

from lstm_serving.core.dataplane import Pending
from lstm_serving.core.requests import ANYONE, Caller
from lstm_serving.errors import DeadlineExceeded, ServingError
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from lstm_serving.protocols import kserve_v2
from lstm_serving.server.budget import Share
from lstm_serving.server.registration import decoded
from lstm_serving.server.servicer import (
    Context,
    ObservedServicer,
    answers_errors,
    caller_of,
    deadline_of,
    sent,
)
from lstm_serving.version import __version__

SERVER_NAME = "lstm-serving"
STREAM_RPC = "ModelStreamInfer"
STREAM_IN_FLIGHT = 256  # requests of one ModelStreamInfer stream read ahead of its answers
# Bytes of requests read and answers not yet sent that one stream may hold before it stops
# reading, so a client that never reads holds little (docs/decisions.md).
STREAM_READ_AHEAD_BYTES = 1 << 20


class _ReadAhead:
    """What a stream holds for its caller, taken from its connection's answer budget (`share`);
    `room()` waits while it is over the stream's read-ahead limit."""

    def __init__(self, share: Share, limit: int) -> None:
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


class InferenceServicer(ObservedServicer):
    LABEL_FIELDS: ClassVar[Mapping[str, tuple[str, str]]] = {
        "ModelInfer": ("model_name", "model_version"),
        "ModelStreamInfer": ("model_name", "model_version"),
        "ModelReady": ("name", ""),
        "ModelMetadata": ("name", ""),
    }

    @answers_errors
    async def ServerLive(
        self, request: v2.ServerLiveRequest, context: Context
    ) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    @answers_errors
    async def ServerReady(
        self, request: v2.ServerReadyRequest, context: Context
    ) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self._dataplane.registry.ready)

    @answers_errors
    async def ModelReady(
        self, request: v2.ModelReadyRequest, context: Context
    ) -> v2.ModelReadyResponse:
        try:
            self._dataplane.model(request.name, kserve_v2.parse_version(request.version))
        except ServingError:
            return v2.ModelReadyResponse(ready=False)
        return v2.ModelReadyResponse(ready=True)

    @answers_errors
    async def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: Context
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name=SERVER_NAME, version=__version__)

    @answers_errors
    async def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: Context
    ) -> v2.ModelMetadataResponse:
        model = self._dataplane.model(request.name, kserve_v2.parse_version(request.version))
        versions = self._dataplane.registry.versions()[model.name]
        return kserve_v2.model_metadata(model.name, versions, model.architecture)

    @answers_errors
    async def ModelInfer(
        self, request: v2.ModelInferRequest, context: Context
    ) -> v2.ModelInferResponse:
        caller = caller_of(context) if kserve_v2.in_sequence(request) else ANYONE
        call = kserve_v2.decode_infer_request(decoded(request), deadline_of(context), caller)
        result = await self._dataplane.infer(call, self.held_until_done(context).hold)
        return kserve_v2.encode_infer_response(result, request.id)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[v2.ModelInferRequest], context: Context
    ) -> None:
        """Every request is checked and queued as it is read (so they batch), and answered in
        order as its rows come back: one reader task and this writer, no task per message.

        A bad request gets `error_message` on the stream, which stays open for the next one.
        Read-ahead is bounded in count and in bytes: a client that sends faster than it reads
        its answers is slowed down by gRPC flow control instead of growing the server's memory.
        """
        deadline, caller = deadline_of(context), caller_of(context)
        pending: asyncio.Queue[_Streamed | None] = asyncio.Queue(STREAM_IN_FLIGHT)
        held = _ReadAhead(self._budget.share(context.peer()), STREAM_READ_AHEAD_BYTES)

        async def read() -> None:
            try:
                async for request in self._streams.messages(request_iterator):
                    await pending.put(self._accepted(request, deadline, caller, held))
                    await held.room()
            finally:  # a failed read ends the stream (re-raised by `await reader`)
                await pending.put(None)

        await self.open_stream(STREAM_RPC, context, caller)
        reader = asyncio.ensure_future(read())
        try:
            while (streamed := await pending.get()) is not None:
                if not await sent(context, await self._answer(streamed)):
                    return
                held.release(streamed.reserved)
            await reader
        except DeadlineExceeded as idle:
            self.end_stream(context, self.failed(STREAM_RPC, None, idle, time.perf_counter()))
        finally:
            held.release()
            self.close_stream(caller)
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None and isinstance(leftover.work, Pending):
                    leftover.work.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader

    def _accepted(
        self,
        request: v2.ModelInferRequest,
        deadline: float | None,
        caller: Caller,
        held: _ReadAhead,
    ) -> _Streamed:
        """A stream's message decoded, checked and queued as it is read, its bytes reserved; a
        refusal is counted and its answer made now. The request itself is not kept: a stream
        whose answers wait may hold 256 of them."""
        started, before = time.perf_counter(), held.size
        # what the request names, for its answer (an Undecodable names nothing)
        names: tuple[str, str, str] = (
            getattr(request, "id", ""),
            getattr(request, "model_name", ""),
            getattr(request, "model_version", ""),
        )
        try:
            call = kserve_v2.decode_infer_request(decoded(request), deadline, caller)
            work: Pending | v2.ModelStreamInferResponse = self._dataplane.submit(
                call, held.hold, in_order=True
            )
        except Exception as exc:
            work = _refusal(*names, self.failed(STREAM_RPC, request, exc, started))
        return _Streamed(work, *names, reserved=held.size - before, started=started)

    async def _answer(self, streamed: _Streamed) -> v2.ModelStreamInferResponse:
        """A stream's message's answer, or its error, once its turn has come."""
        if not isinstance(streamed.work, Pending):
            return streamed.work
        answer = v2.ModelStreamInferResponse()
        try:
            result = await streamed.work.result()
            kserve_v2.encode_infer_response(result, streamed.id, answer.infer_response)
        except Exception as exc:
            names = streamed.id, streamed.model, streamed.version
            named = v2.ModelInferRequest(model_name=streamed.model)  # the failure's label
            return _refusal(*names, self.failed(STREAM_RPC, named, exc, streamed.started))
        self.count(
            STREAM_RPC, result.model, str(result.version), grpc.StatusCode.OK, streamed.started
        )
        return answer


def _refusal(
    id: str, model: str, version: str, status: tuple[grpc.StatusCode, str]
) -> v2.ModelStreamInferResponse:
    """A stream's answer to a message that failed: the stream stays open."""
    return v2.ModelStreamInferResponse(
        error_message=f"{status[0].name}: {status[1]}",
        infer_response=v2.ModelInferResponse(model_name=model, model_version=version, id=id),
    )


@dataclass(slots=True)
class _Streamed:
    """One message of a ModelStreamInfer stream, read and not yet answered."""

    work: Pending | v2.ModelStreamInferResponse  # its answer on its way, or its refusal
    id: str  # what the request named, for its answer
    model: str
    version: str
    reserved: int  # bytes it holds of the stream's read-ahead until its answer is sent
    started: float  # time.perf_counter() when it was read
