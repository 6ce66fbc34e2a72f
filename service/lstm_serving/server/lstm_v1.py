"""lstm.v1.LstmService over gRPC: decode, one data-plane call, encode. No model logic."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Mapping
from typing import ClassVar

from lstm_serving.core.dataplane import DataPlane
from lstm_serving.core.metrics import Metrics
from lstm_serving.core.requests import ANYONE, Caller
from lstm_serving.core.settings import Settings
from lstm_serving.errors import DeadlineExceeded
from lstm_serving.proto.v1 import lstm_pb2 as pb
from lstm_serving.protocols import lstm_v1
from lstm_serving.server.budget import AnswerBudget, Share
from lstm_serving.server.registration import decoded
from lstm_serving.server.servicer import (
    CallFailed,
    Context,
    ObservedServicer,
    OpenStreams,
    answers_errors,
    caller_of,
    deadline_of,
    sent,
)


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
        return await self._predict(
            request, deadline_of(context), caller, self.held_until_done(context)
        )

    async def _predict(
        self, request: pb.PredictRequest, deadline: float | None, caller: Caller, share: Share
    ) -> pb.PredictResponse:
        call = lstm_v1.decode_predict(decoded(request), deadline, caller)
        return lstm_v1.encode_prediction(await self._dataplane.infer(call, share.hold))

    async def PredictStream(
        self, request_iterator: AsyncIterator[pb.PredictRequest], context: Context
    ) -> None:
        """One message at a time, each answered before the next is read: a failed message
        ends the stream with its status, and nothing after it has run."""
        deadline, caller = deadline_of(context), caller_of(context)
        await self.open_stream("PredictStream", context, caller)
        share = self._budget.share(context.peer())
        try:
            async for request in self._streams.messages(request_iterator):
                work = functools.partial(self._predict, request, deadline, caller, share)
                try:
                    response = await self.answered("PredictStream", request, work)
                except CallFailed as failure:
                    self.end_stream(context, (failure.code, failure.message))
                    return
                if not await sent(context, response):
                    return
                share.release()
        except DeadlineExceeded as idle:
            self.end_stream(context, self.failed("PredictStream", None, idle, time.perf_counter()))
        finally:
            share.release()
            self.close_stream(caller)

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
