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
from typing import ClassVar

import grpc

from lstm_serving.core.requests import Caller, InferRequest
from lstm_serving.errors import DeadlineExceeded, ResourceExhausted, ServingError
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from lstm_serving.protocols import kserve_v2
from lstm_serving.server.budget import Share
from lstm_serving.server.registration import decoded
from lstm_serving.server.servicer import (
    CallFailed,
    Context,
    ObservedServicer,
    answers_errors,
    caller_of,
    deadline_of,
    sent,
)
from lstm_serving.version import __version__

SERVER_NAME = "lstm-serving"
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

    def reserve(self, size: int) -> None:
        """Takes `size` bytes, or raises the budget's ResourceExhausted."""
        self._share.reserve(size)
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

    async def _infer(
        self,
        request: v2.ModelInferRequest,
        call: InferRequest,
        into: v2.ModelInferResponse | None = None,
    ) -> v2.ModelInferResponse:
        result = await self._dataplane.infer(call)
        return kserve_v2.encode_infer_response(result, request.id, into)

    @answers_errors
    async def ModelInfer(
        self, request: v2.ModelInferRequest, context: Context
    ) -> v2.ModelInferResponse:
        call = kserve_v2.decode_infer_request(
            decoded(request), deadline_of(context), caller_of(context)
        )
        self.held_until_done(context).reserve(self.held_bytes(call))
        return await self._infer(request, call)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[v2.ModelInferRequest], context: Context
    ) -> None:
        """Every request is submitted as it arrives (so they batch); answers keep their order.

        A bad request gets `error_message` on the stream, which stays open for the next one.
        Read-ahead is bounded in count and in bytes: a client that sends faster than it reads
        its answers is slowed down by gRPC flow control instead of growing the server's memory.
        """
        deadline, caller = deadline_of(context), caller_of(context)
        # each answer, and what it holds (of the read-ahead and the budget) until it is sent
        pending: asyncio.Queue[tuple[asyncio.Task[v2.ModelStreamInferResponse], int] | None]
        pending = asyncio.Queue(STREAM_IN_FLIGHT)
        held = _ReadAhead(self._budget.share(context.peer()), STREAM_READ_AHEAD_BYTES)

        async def read() -> None:
            try:
                async for request in self._streams.messages(request_iterator):
                    call = self._decoded(request, deadline, caller)
                    reserved = 0 if isinstance(call, Exception) else self.held_bytes(call)
                    try:
                        held.reserve(reserved)
                    except ResourceExhausted as over:  # answered in its turn, as a failure
                        call, reserved = over, 0
                    running = asyncio.ensure_future(self._stream_one(request, call))
                    await pending.put((running, reserved))
                    await held.room()
            finally:  # a failed read ends the stream (re-raised by `await reader`)
                await pending.put(None)

        await self.open_stream("ModelStreamInfer", context, caller)
        reader = asyncio.ensure_future(read())
        try:
            while (next_answer := await pending.get()) is not None:
                answer, reserved = next_answer
                if not await sent(context, await answer):
                    return
                held.release(reserved)
            await reader
        except DeadlineExceeded as idle:
            self.end_stream(
                context, self.failed("ModelStreamInfer", None, idle, time.perf_counter())
            )
        finally:
            held.release()
            self.close_stream(caller)
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover[0].cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader

    @staticmethod
    def _decoded(
        request: v2.ModelInferRequest, deadline: float | None, caller: Caller
    ) -> InferRequest | Exception:
        """A stream's message decoded once, as it is read; a failure is answered in its turn."""
        try:
            return kserve_v2.decode_infer_request(decoded(request), deadline, caller)
        except Exception as exc:
            return exc

    async def _stream_one(
        self, request: v2.ModelInferRequest, call: InferRequest | Exception
    ) -> v2.ModelStreamInferResponse:
        streamed = v2.ModelStreamInferResponse()

        async def work() -> v2.ModelInferResponse:
            if isinstance(call, Exception):  # decoding failed as it was read
                raise call
            return await self._infer(request, call, streamed.infer_response)

        try:
            await self.answered("ModelStreamInfer", request, work)
        except CallFailed as failure:
            return v2.ModelStreamInferResponse(
                error_message=f"{failure.code.name}: {failure.message}",
                infer_response=v2.ModelInferResponse(
                    model_name=getattr(request, "model_name", ""),
                    model_version=getattr(request, "model_version", ""),
                    id=getattr(request, "id", ""),  # an Undecodable has none of these
                ),
            )
        return streamed
