"""lstm.v1.LstmService over gRPC: decode, delegate to the model's batcher, encode.

Holds no model logic. Also the one mapping from ServingError classes to gRPC status codes.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from lstm.v1 import lstm_pb2 as pb
from lstm.v1 import lstm_pb2_grpc as pb_grpc
from service import codec
from service.config import Settings
from service.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServingError,
    Unavailable,
)
from service.metrics import Metrics
from service.registry import Registry

log = logging.getLogger(__name__)

STATUS: dict[type[ServingError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}

Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, Context], Awaitable[Resp]]


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller gets for `exc`; internals are never shown."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls], str(exc)
    return grpc.StatusCode.INTERNAL, "internal error (logged on the server)"


class ObservedServicer:
    """Base of both protocols' servicers: the models, and the per-call metrics."""

    def __init__(self, registry: Registry, settings: Settings, metrics: Metrics) -> None:
        self._registry = registry
        self._settings = settings
        self._metrics = metrics

    def record(
        self, rpc: str, request: Any, response: Any, code: grpc.StatusCode, started: float
    ) -> None:
        """Counts one answered call. Unknown model names become "_unknown" (bounded labels)."""
        name = next((getattr(request, f) for f in _MODEL_FIELDS if hasattr(request, f)), "")
        if name and name not in self._registry.versions():
            name = "_unknown"
        fields = [f for f in _VERSION_FIELDS if response is not None and hasattr(response, f)]
        version = str(getattr(response, fields[0])) if fields else ""
        self._metrics.requests.labels(name, version, rpc, code.name).inc()
        self._metrics.request_duration.labels(name, rpc).observe(time.perf_counter() - started)

    def failed(
        self, rpc: str, request: Any, exc: Exception, started: float
    ) -> tuple[grpc.StatusCode, str]:
        """The status a failed call gets; internal faults are logged, every failure counted."""
        code, message = status_of(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.error("%s failed", rpc, exc_info=exc)
        self.record(rpc, request, None, code, started)
        return code, message


_MODEL_FIELDS = ("model", "model_name", "name")
_VERSION_FIELDS = ("version", "model_version")


def answers_errors(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Turns a handler's exceptions into gRPC statuses (logging unexpected ones); records it."""

    @functools.wraps(handler)
    async def wrapper(self: ObservedServicer, request: Req, context: Context) -> Resp:
        started = time.perf_counter()
        try:
            response = await handler(self, request, context)
        except Exception as exc:
            code, message = self.failed(handler.__name__, request, exc, started)
            await context.abort(code, message)
            raise AssertionError("unreachable: abort raises") from exc
        self.record(handler.__name__, request, response, grpc.StatusCode.OK, started)
        return response

    return wrapper


def deadline_of(context: Context) -> float | None:
    """The caller's deadline on the time.monotonic() clock, if it set one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class LstmServicer(ObservedServicer, pb_grpc.LstmServiceServicer):
    def __init__(self, registry: Registry, settings: Settings, metrics: Metrics) -> None:
        super().__init__(registry, settings, metrics)
        self._limits = pb.BatchingLimits(
            max_batch_size=settings.max_batch_size,
            max_queue_delay_ms=settings.max_queue_delay_ms,
            max_queue_size=settings.max_queue_size,
            max_sequence_length=settings.max_sequence_length,
        )

    @answers_errors
    async def Predict(self, request: pb.PredictRequest, context: Context) -> pb.PredictResponse:
        served = self._registry.resolve(request.model, request.version)
        arch = served.model.architecture
        if not request.HasField("input"):
            raise InvalidArgument("input is not set: send a [batch, time, features] Tensor")
        inputs = codec.decode_input(
            request.input,
            arch,
            self._settings.max_sequence_length,
            self._settings.max_request_sequences,
        )
        lengths = codec.decode_lengths(request.lengths, inputs.shape[0], inputs.shape[1])
        outputs = codec.requested_outputs(request.output, request.return_state, len(arch.layers))
        results = await served.batcher.submit(inputs, lengths, outputs, deadline_of(context))
        return codec.encode_prediction(
            results, served.model.name, served.model.version, len(arch.layers)
        )

    @answers_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[
                pb.ModelVersions(name=name, versions=versions)
                for name, versions in self._registry.versions().items()
            ]
        )

    @answers_errors
    async def DescribeModel(
        self, request: pb.DescribeModelRequest, context: Context
    ) -> pb.ModelDescription:
        model = self._registry.resolve(request.model, request.version).model
        return codec.describe(
            model.architecture,
            model.name,
            model.version,
            self._registry.versions()[model.name],
            model.provider,
            self._limits,
        )
