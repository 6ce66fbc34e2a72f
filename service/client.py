"""Python clients for lstm.v1: `LstmClient` (blocking) and `AsyncLstmClient` (asyncio).

Both take and return numpy arrays; the protobuf stays inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from lstm.v1 import lstm_pb2 as pb
from lstm.v1 import lstm_pb2_grpc as pb_grpc
from service import codec

OUTPUTS = {
    "last_hidden": pb.LAST_HIDDEN,
    "sequence": pb.SEQUENCE,
    "both": pb.LAST_HIDDEN_AND_SEQUENCE,
}


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


# Large requests and answers are the server's to refuse (--max-message-bytes), not ours.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def channel(target: str, security: Security | None = None) -> grpc.Channel:
    security = security or Security()
    if security.tls:
        return grpc.secure_channel(target, security.credentials(), CHANNEL_OPTIONS)
    return grpc.insecure_channel(target, CHANNEL_OPTIONS)


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


def predict_request(
    model: str,
    inputs: np.ndarray,
    lengths: list[int] | np.ndarray | None = None,
    output: str = "last_hidden",
    version: int = 0,
    return_state: bool = False,
) -> pb.PredictRequest:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    return pb.PredictRequest(
        model=model,
        version=version,
        input=codec.array_to_tensor(inputs),
        lengths=[] if lengths is None else [int(n) for n in lengths],
        output=OUTPUTS[output],
        return_state=return_state,
    )


def prediction(response: pb.PredictResponse) -> Prediction:
    result = Prediction(response.model, response.version)
    if response.HasField("last_hidden"):
        result.last_hidden = codec.tensor_to_array(response.last_hidden, "last_hidden")
    if response.HasField("sequence"):
        result.sequence = codec.tensor_to_array(response.sequence, "sequence")
    result.states = [
        (codec.tensor_to_array(s.h, "state.h"), codec.tensor_to_array(s.c, "state.c"))
        for s in response.state
    ]
    return result


HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def _health_status(response: health_pb2.HealthCheckResponse) -> str:
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def _health_check_kwargs() -> dict[str, Any]:
    return {
        "request_serializer": health_pb2.HealthCheckRequest.SerializeToString,
        "response_deserializer": health_pb2.HealthCheckResponse.FromString,
    }


class LstmClient:
    """Blocking client: `with LstmClient("localhost:50051") as c: c.predict("seed", x)`."""

    def __init__(
        self, target: str, timeout: float | None = 30.0, security: Security | None = None
    ) -> None:
        self.channel = channel(target, security)
        self.timeout = timeout
        self._metadata = (security or Security()).metadata()
        self._stub = pb_grpc.LstmServiceStub(self.channel)
        self._health_check = self.channel.unary_unary(HEALTH_CHECK, **_health_check_kwargs())

    def predict(self, model: str, inputs: np.ndarray, **options: object) -> Prediction:
        """Options: lengths, output ("last_hidden", "sequence", "both"), version, return_state."""
        request = predict_request(model, inputs, **options)  # type: ignore[arg-type]
        return prediction(
            self._stub.Predict(request, timeout=self.timeout, metadata=self._metadata)
        )

    def list_models(self) -> dict[str, list[int]]:
        response = self._stub.ListModels(
            pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
        )
        return {m.name: list(m.versions) for m in response.models}

    def describe(self, model: str, version: int = 0) -> pb.ModelDescription:
        request = pb.DescribeModelRequest(model=model, version=version)
        return self._stub.DescribeModel(request, timeout=self.timeout, metadata=self._metadata)

    def health(self, service: str = "") -> str:
        """SERVING, NOT_SERVING, ... for the whole server ("") or one service."""
        request = health_pb2.HealthCheckRequest(service=service)
        return _health_status(
            self._health_check(request, timeout=self.timeout, metadata=self._metadata)
        )

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class AsyncLstmClient:
    """asyncio client: `async with AsyncLstmClient(target) as c: await c.predict(...)`."""

    def __init__(
        self, target: str, timeout: float | None = 30.0, security: Security | None = None
    ) -> None:
        self.channel = aio_channel(target, security)
        self.timeout = timeout
        self._metadata = (security or Security()).metadata()
        self._stub = pb_grpc.LstmServiceStub(self.channel)
        self._health_check = self.channel.unary_unary(HEALTH_CHECK, **_health_check_kwargs())

    async def predict(self, model: str, inputs: np.ndarray, **options: object) -> Prediction:
        request = predict_request(model, inputs, **options)  # type: ignore[arg-type]
        return prediction(
            await self._stub.Predict(request, timeout=self.timeout, metadata=self._metadata)
        )

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
        request = health_pb2.HealthCheckRequest(service=service)
        return _health_status(
            await self._health_check(request, timeout=self.timeout, metadata=self._metadata)
        )

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
