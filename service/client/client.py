"""Python clients for lstm.v1: `AsyncLstmClient` (asyncio) and `LstmClient` (blocking).

Both take and return numpy arrays; the protobuf stays inside. There is one implementation:
the blocking client runs the asyncio one on a private event-loop thread, so the two cannot
drift apart, and a blocking client may be shared by threads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypedDict, TypeVar, Unpack

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from lstm_serving.contract import LAST_HIDDEN, LENGTHS, OUTPUT_CHOICES, SEQUENCE
from lstm_serving.proto.v1 import lstm_pb2 as pb
from lstm_serving.proto.v1 import lstm_pb2_grpc as pb_grpc
from lstm_serving.protocols.lstm_v1 import OUTPUT_ENUM, array_to_tensor, tensor_to_array

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Security:
    """How a client proves itself: TLS (server CA, optional client certificate) and a token."""

    ca: Path | None = None  # PEM CA that signed the server's certificate; turns TLS on
    cert: Path | None = None  # PEM client certificate, for mutual TLS
    key: Path | None = None
    token: str | None = None  # sent as `authorization: Bearer <token>`

    @property
    def tls(self) -> bool:
        return self.ca is not None or self.cert is not None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# Large requests and answers are the server's to refuse (--max-message-bytes), not ours.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def aio_channel(target: str, security: Security | None = None) -> grpc.aio.Channel:
    security = security or Security()
    if security.tls:
        return grpc.aio.secure_channel(target, security.credentials(), CHANNEL_OPTIONS)
    return grpc.aio.insecure_channel(target, CHANNEL_OPTIONS)


@dataclass
class Prediction:
    model: str
    version: int
    last_hidden: np.ndarray | None = None  # [batch, units]
    sequence: np.ndarray | None = None  # [batch, time, units]
    states: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (h, c) per layer


class PredictOptions(TypedDict, total=False):
    lengths: Sequence[int] | np.ndarray | None  # per sequence, in 1..time; None: all `time`
    output: str  # "last_hidden" (default), "sequence" or "both"
    version: int  # 0 (default): the newest
    return_state: bool  # also each layer's final (h, c)


def predict_request(
    model: str, inputs: np.ndarray, **options: Unpack[PredictOptions]
) -> pb.PredictRequest:
    output, lengths = options.get("output", LAST_HIDDEN), options.get(LENGTHS)
    if output not in OUTPUT_CHOICES:
        raise ValueError(f"output must be one of {', '.join(OUTPUT_CHOICES)}, got {output!r}")
    return pb.PredictRequest(
        model=model,
        version=options.get("version", 0),
        input=array_to_tensor(inputs),
        lengths=[] if lengths is None else [int(n) for n in lengths],
        output=OUTPUT_ENUM[output],  # type: ignore[arg-type]  # the enum's int values
        return_state=options.get("return_state", False),
    )


def prediction(response: pb.PredictResponse) -> Prediction:
    result = Prediction(response.model, response.version)
    if response.HasField(LAST_HIDDEN):
        result.last_hidden = tensor_to_array(response.last_hidden, LAST_HIDDEN)
    if response.HasField(SEQUENCE):
        result.sequence = tensor_to_array(response.sequence, SEQUENCE)
    result.states = [
        (tensor_to_array(s.h, "state.h"), tensor_to_array(s.c, "state.c")) for s in response.state
    ]
    return result


class AsyncLstmClient:
    """asyncio client: `async with AsyncLstmClient(target) as c: await c.predict(...)`."""

    def __init__(
        self, target: str, timeout: float | None = 30.0, security: Security | None = None
    ) -> None:
        self.channel = aio_channel(target, security)
        self.timeout = timeout
        self._metadata = (security or Security()).metadata()
        self._stub = pb_grpc.LstmServiceStub(self.channel)
        self._health_check = self.channel.unary_unary(  # the health stubs are untyped
            HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )

    async def predict(
        self, model: str, inputs: np.ndarray, **options: Unpack[PredictOptions]
    ) -> Prediction:
        """inputs [batch, time, features]; options: lengths, output, version, return_state."""
        request = predict_request(model, inputs, **options)
        response = await self._stub.Predict(request, timeout=self.timeout, metadata=self._metadata)
        return prediction(response)

    async def list_models(self) -> dict[str, list[int]]:
        response = await self._stub.ListModels(
            pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
        )
        return {m.name: list(m.versions) for m in response.models}

    async def describe(self, model: str, version: int = 0) -> pb.ModelDescription:
        request = pb.DescribeModelRequest(model=model, version=version)
        return await self._stub.DescribeModel(
            request, timeout=self.timeout, metadata=self._metadata
        )

    async def health(self, service: str = "") -> str:
        """SERVING, NOT_SERVING, ... for the whole server ("") or one service."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._health_check(request, timeout=self.timeout, metadata=self._metadata)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _blocking(
    method: Callable[Concatenate[AsyncLstmClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[LstmClient, P], T]:
    """AsyncLstmClient's method, run to completion on the blocking client's loop thread."""

    def call(client: LstmClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return client._run(method(client._client, *args, **kwargs))

    call.__name__, call.__doc__ = method.__name__, method.__doc__
    return call


class LstmClient:
    """Blocking client: `with LstmClient("localhost:50051") as c: c.predict("seed", x)`."""

    def __init__(
        self, target: str, timeout: float | None = 30.0, security: Security | None = None
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="lstm-client", daemon=True
        )
        self._thread.start()

        async def open_client() -> AsyncLstmClient:  # the channel belongs to the loop thread
            return AsyncLstmClient(target, timeout, security)

        self._client = self._run(open_client())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    predict = _blocking(AsyncLstmClient.predict)
    list_models = _blocking(AsyncLstmClient.list_models)
    describe = _blocking(AsyncLstmClient.describe)
    health = _blocking(AsyncLstmClient.health)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
