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


def answers_errors(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Turns a handler's exceptions into gRPC statuses, logging the unexpected ones."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Req, context: Context) -> Resp:
        try:
            return await handler(self, request, context)
        except Exception as exc:
            code, message = status_of(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.error("%s failed", handler.__name__, exc_info=exc)
            await context.abort(code, message)
            raise AssertionError("unreachable: abort raises") from exc

    return wrapper


def deadline_of(context: Context) -> float | None:
    """The caller's deadline on the time.monotonic() clock, if it set one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class LstmServicer(pb_grpc.LstmServiceServicer):
    def __init__(self, registry: Registry, settings: Settings) -> None:
        self._registry = registry
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
        inputs = codec.decode_input(request.input, arch, self._limits.max_sequence_length)
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
