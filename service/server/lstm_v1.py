"""lstm.v1.LstmService over gRPC: decode, one data-plane call, encode. No model logic."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from lstm_serving.core.dataplane import DataPlane
from lstm_serving.core.metrics import Metrics
from lstm_serving.core.settings import Settings
from lstm_serving.proto.v1 import lstm_pb2 as pb
from lstm_serving.proto.v1 import lstm_pb2_grpc as pb_grpc
from lstm_serving.protocols import lstm_v1
from lstm_serving.server.status import Context, ObservedServicer, answers_errors, deadline_of


class LstmServicer(ObservedServicer, pb_grpc.LstmServiceServicer):
    LABEL_FIELDS: ClassVar[Mapping[str, tuple[str, str]]] = {
        "Predict": ("model", "version"),
        "DescribeModel": ("model", "version"),
    }

    def __init__(self, dataplane: DataPlane, settings: Settings, metrics: Metrics) -> None:
        super().__init__(dataplane, metrics)
        self._limits = pb.BatchingLimits(
            max_batch_size=settings.max_batch_size,
            max_queue_delay_ms=settings.max_queue_delay_ms,
            max_queue_size=settings.max_queue_size,
            max_sequence_length=settings.max_sequence_length,
        )

    @answers_errors
    async def Predict(self, request: pb.PredictRequest, context: Context) -> pb.PredictResponse:
        call = lstm_v1.decode_predict(request, deadline_of(context))
        return lstm_v1.encode_prediction(await self._dataplane.infer(call))

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
