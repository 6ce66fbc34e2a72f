"""inference.GRPCInferenceService (KServe v2 / Open Inference Protocol, Triton's streaming).

Same port, same data plane and batchers as lstm.v1: a v2 request and an lstm.v1 request can
share one batch. Decode, one data-plane call, encode; errors map and are counted through
`ObservedServicer.failed`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import ClassVar

import grpc

from lstm_serving.core.dataplane import Pending, Reserve
from lstm_serving.core.requests import ANYONE, Caller
from lstm_serving.errors import ServingError
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from lstm_serving.protocols import kserve_v2
from lstm_serving.server.registration import decoded
from lstm_serving.server.servicer import (
    ObservedServicer,
    answers_errors,
    caller_of,
    deadline_of,
)
from lstm_serving.server.streams import Accepted, CallFailed, Context
from lstm_serving.version import __version__

SERVER_NAME = "lstm-serving"
STREAM_RPC = "ModelStreamInfer"


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
        """Every request is checked and queued as it is read, so they batch, and answered in
        order (`streams`). A bad request gets `error_message` on the stream, which stays open
        for the next one."""
        await self.answer_stream(
            STREAM_RPC, request_iterator, context, self._accepted, self._answer
        )

    def _accepted(
        self,
        deadline: float | None,
        caller: Caller,
        request: v2.ModelInferRequest,
        reserve: Reserve,
        alone: bool,
    ) -> Accepted[v2.ModelStreamInferResponse]:
        """A stream's message decoded, checked and queued; a refusal is counted and its answer
        made now. The request itself is not kept: a stream whose answers wait holds up to
        STREAM_IN_FLIGHT messages. QueueFull is raised (to wait) unless the message is `alone`."""
        named: tuple[str, str, str] = (  # what its answer repeats (an Undecodable names none)
            getattr(request, "id", ""),
            getattr(request, "model_name", ""),
            getattr(request, "model_version", ""),
        )
        try:
            call = kserve_v2.decode_infer_request(decoded(request), deadline, caller)
            submitted = self._dataplane.submit(call, reserve, in_order=True, ahead=not alone)
            return Accepted(submitted, named)
        except Exception as exc:
            status = self.refused_as_read(STREAM_RPC, request, exc, alone)
            return Accepted(_refusal(*named, status), named)

    async def _answer(
        self, accepted: Accepted[v2.ModelStreamInferResponse]
    ) -> v2.ModelStreamInferResponse:
        """A stream's message's answer, or its error, once its turn has come."""
        work = accepted.work
        if not isinstance(work, Pending):
            assert not isinstance(work, CallFailed)  # refusals are answered as made
            return work
        answer = v2.ModelStreamInferResponse()
        request_id, model, version = accepted.echoed
        try:
            result = await work.result()
            kserve_v2.encode_infer_response(result, request_id, answer.infer_response)
        except Exception as exc:
            status = self.failed(STREAM_RPC, None, exc, accepted.started, model)
            return _refusal(request_id, model, version, status)
        self.count(
            STREAM_RPC, result.model, str(result.version), grpc.StatusCode.OK, accepted.started
        )
        return answer


def _refusal(
    request_id: str, model: str, version: str, status: tuple[grpc.StatusCode, str]
) -> v2.ModelStreamInferResponse:
    """A stream's answer to a message that failed: the stream stays open."""
    return v2.ModelStreamInferResponse(
        error_message=f"{status[0].name}: {status[1]}",
        infer_response=v2.ModelInferResponse(
            model_name=model, model_version=version, id=request_id
        ),
    )
