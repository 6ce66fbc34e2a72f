"""lstm.v1.LstmService over gRPC: decode, one data-plane call, encode. No model logic."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import ClassVar

import grpc

from lstm_serving.core.dataplane import DataPlane, Pending, Reserve
from lstm_serving.core.metrics import Metrics
from lstm_serving.core.requests import ANYONE, Caller
from lstm_serving.core.settings import Settings
from lstm_serving.proto.v1 import lstm_pb2 as pb
from lstm_serving.protocols import lstm_v1
from lstm_serving.server.budget import AnswerBudget
from lstm_serving.server.registration import decoded
from lstm_serving.server.servicer import (
    ObservedServicer,
    OpenStreams,
    answers_errors,
    caller_of,
    deadline_of,
)
from lstm_serving.server.streams import Accepted, CallFailed, Context

STREAM_RPC = "PredictStream"


class LstmServicer(ObservedServicer):
    LABEL_FIELDS: ClassVar[Mapping[str, tuple[str, str]]] = {
        "Predict": ("model", "version"),
        "PredictStream": ("model", "version"),
        "DescribeModel": ("model", "version"),
    }

    def __init__(
        self,
        dataplane: DataPlane,
        settings: Settings,
        metrics: Metrics,
        streams: OpenStreams,
        budget: AnswerBudget,
    ) -> None:
        super().__init__(dataplane, metrics, streams, budget)
        self._limits = pb.BatchingLimits(
            max_batch_size=settings.max_batch_size,
            max_queue_delay_ms=settings.max_queue_delay_ms,
            max_queue_size=settings.max_queue_size,
            max_sequence_length=settings.max_sequence_length,
            max_sequences=settings.max_sequences,
            sequence_idle_timeout_s=settings.sequence_idle_timeout,
        )

    @answers_errors
    async def Predict(self, request: pb.PredictRequest, context: Context) -> pb.PredictResponse:
        caller = caller_of(context) if lstm_v1.in_sequence(request) else ANYONE
        call = lstm_v1.decode_predict(decoded(request), deadline_of(context), caller)
        result = await self._dataplane.infer(call, self.held_until_done(context).hold)
        return lstm_v1.encode_prediction(result)

    async def PredictStream(
        self, request_iterator: AsyncIterator[pb.PredictRequest], context: Context
    ) -> None:
        """Messages are checked and queued as they are read, so they batch, and answered in
        order (`streams`); a step of a server-held sequence starts when its turn comes, once
        every earlier message is answered. A failed message ends the stream with its status:
        nothing after it is answered, and no sequence step after it runs."""
        await self.answer_stream(
            STREAM_RPC, request_iterator, context, self._accepted, self._answer
        )

    def _accepted(
        self,
        deadline: float | None,
        caller: Caller,
        request: pb.PredictRequest,
        reserve: Reserve,
        alone: bool,
    ) -> Accepted[pb.PredictResponse]:
        """A stream's message decoded, checked and queued; a failure is counted now and ends
        the stream in its turn. QueueFull is raised (to wait) unless the message is `alone`."""
        model = getattr(request, "model", "")  # the label of a later failure
        try:
            call = lstm_v1.decode_predict(decoded(request), deadline, caller)
            return Accepted(self._dataplane.submit(call, reserve, ahead=not alone), (model,))
        except Exception as exc:
            return Accepted(CallFailed(*self.refused_as_read(STREAM_RPC, request, exc, alone)))

    async def _answer(self, accepted: Accepted[pb.PredictResponse]) -> pb.PredictResponse:
        """A stream's message's answer once its turn has come; CallFailed ends the stream."""
        work = accepted.work
        if isinstance(work, CallFailed):
            raise work
        assert isinstance(work, Pending)  # answers are never made ahead
        try:
            result = await work.result()
        except Exception as exc:
            status = self.failed(STREAM_RPC, None, exc, accepted.started, accepted.echoed[0])
            raise CallFailed(*status) from exc
        self.count(
            STREAM_RPC, result.model, str(result.version), grpc.StatusCode.OK, accepted.started
        )
        return lstm_v1.encode_prediction(result)

    @answers_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[
                pb.ModelVersions(name=name, versions=versions)
                for name, versions in self._dataplane.registry.versions().items()
            ]
        )

    @answers_errors
    async def DescribeModel(
        self, request: pb.DescribeModelRequest, context: Context
    ) -> pb.ModelDescription:
        model = self._dataplane.model(request.model, request.version)
        return lstm_v1.describe(
            model.architecture,
            model.name,
            model.version,
            self._dataplane.registry.versions()[model.name],
            model.provider,
            self._limits,
        )
