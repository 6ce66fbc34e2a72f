"""inference.GRPCInferenceService (KServe v2 / Open Inference Protocol, Triton's streaming).

Same port, same registry and batchers as lstm.v1: a v2 request and an lstm.v1 request can
share one batch. Decode, delegate, encode; errors map and are counted
through `ObservedServicer.failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc

from lstm.kserve.v2 import grpc_predict_v2_pb2 as v2
from lstm.kserve.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from service import kserve_codec
from service.errors import ServingError
from service.servicers import Context, ObservedServicer, answers_errors, deadline_of

SERVER_NAME = "lstm-serving"
SERVER_VERSION = "0.1.0"
STREAM_IN_FLIGHT = 256  # requests of one ModelStreamInfer stream read ahead of its answers


class InferenceServicer(ObservedServicer, v2_grpc.GRPCInferenceServiceServicer):
    @answers_errors
    async def ServerLive(
        self, request: v2.ServerLiveRequest, context: Context
    ) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    @answers_errors
    async def ServerReady(
        self, request: v2.ServerReadyRequest, context: Context
    ) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self._registry.ready)

    @answers_errors
    async def ModelReady(
        self, request: v2.ModelReadyRequest, context: Context
    ) -> v2.ModelReadyResponse:
        try:
            self._registry.resolve(request.name, kserve_codec.parse_version(request.version))
        except ServingError:
            return v2.ModelReadyResponse(ready=False)
        return v2.ModelReadyResponse(ready=True)

    @answers_errors
    async def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: Context
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION)

    @answers_errors
    async def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: Context
    ) -> v2.ModelMetadataResponse:
        model = self._registry.resolve(
            request.name, kserve_codec.parse_version(request.version)
        ).model
        versions = self._registry.versions()[model.name]
        return kserve_codec.model_metadata(model.name, versions, model.architecture)

    async def _infer(
        self, request: v2.ModelInferRequest, deadline: float | None
    ) -> v2.ModelInferResponse:
        served = self._registry.resolve(
            request.model_name, kserve_codec.parse_version(request.model_version)
        )
        call = kserve_codec.decode_infer_request(
            request,
            served.model.architecture,
            self._settings.max_sequence_length,
            self._settings.max_request_sequences,
        )
        results = await served.batcher.submit(call.inputs, call.lengths, call.outputs, deadline)
        return kserve_codec.encode_infer_response(
            results, call.outputs, served.model.name, served.model.version, request.id
        )

    @answers_errors
    async def ModelInfer(
        self, request: v2.ModelInferRequest, context: Context
    ) -> v2.ModelInferResponse:
        return await self._infer(request, deadline_of(context))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[v2.ModelInferRequest], context: Context
    ) -> AsyncIterator[v2.ModelStreamInferResponse]:
        """Every request is submitted as it arrives (so they batch); answers keep their order.

        A bad request gets `error_message` on the stream, which stays open for the next one.
        """
        deadline = deadline_of(context)
        # Bounded: a client that sends faster than it reads its answers is slowed down by
        # gRPC flow control instead of growing the server's memory.
        pending: asyncio.Queue[asyncio.Task[v2.ModelStreamInferResponse] | None] = asyncio.Queue(
            STREAM_IN_FLIGHT
        )

        async def read() -> None:
            async for request in request_iterator:
                await pending.put(asyncio.ensure_future(self._stream_one(request, deadline)))
            await pending.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (task := await pending.get()) is not None:
                yield await task
            await reader
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader

    async def _stream_one(
        self, request: v2.ModelInferRequest, deadline: float | None
    ) -> v2.ModelStreamInferResponse:
        started = time.perf_counter()
        try:
            response = await self._infer(request, deadline)
        except Exception as exc:
            code, message = self.failed("ModelStreamInfer", request, exc, started)
            return v2.ModelStreamInferResponse(
                error_message=f"{code.name}: {message}",
                infer_response=v2.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id,
                ),
            )
        self.record("ModelStreamInfer", request, response, grpc.StatusCode.OK, started)
        return v2.ModelStreamInferResponse(infer_response=response)
