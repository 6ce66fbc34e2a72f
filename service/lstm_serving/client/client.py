"""Python clients for lstm.v1: `AsyncLstmClient` (asyncio) and `LstmClient` (blocking).

Both take and return numpy arrays; the protobuf stays inside (`messages`). There is one
implementation: the blocking client runs the asyncio one on a private event-loop thread.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, Unpack

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from lstm_serving.client.blocking import Blocking, LoopThread, blocking
from lstm_serving.client.messages import (
    Prediction,
    PredictOptions,
    affinity,
    predict_request,
    prediction,
)
from lstm_serving.client.sequences import AsyncSequence, BlockingSequence, SequenceOptions
from lstm_serving.proto.v1 import lstm_pb2 as pb
from lstm_serving.proto.v1 import lstm_pb2_grpc as pb_grpc

__all__ = [
    "AsyncLstmClient",
    "LstmClient",
    "PredictOptions",
    "Prediction",
    "Security",
    "aio_channel",
    "predict_request",
]


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
CHANNEL_OPTIONS = [
    # Large requests and answers are the server's to refuse (--max-message-bytes), not ours.
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # A dead replica (node gone, no FIN) is noticed within 40 s, not at the next TCP timeout;
    # servers accept a ping every 10 s at most.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


# For a target of several servers (a list, or a dns:/// name: the replicas behind a headless
# Service), calls spread over every address with gRPC's own round_robin policy; a server's
# --max-connection-age GOAWAY makes the channel resolve the name again, finding new ones. One
# server keeps gRPC's default (pick_first): round_robin fails calls at once while its only
# connection is down, where pick_first reconnects on the next call (docs/decisions.md).
ROUND_ROBIN = ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}))


def balanced(target: str) -> bool:
    return "," in target or target.startswith("dns:")


def channel_target(target: str) -> str:
    """A gRPC target: `HOST:PORT`, `dns:///NAME:PORT`, or several `IP:PORT` separated by
    commas (gRPC's ipv4:/ipv6: lists; several names need one dns:/// name that resolves to
    them all, such as a Kubernetes headless Service)."""
    if "," not in target:
        return target
    addresses = [a.strip() for a in target.split(",") if a.strip()]
    families = set()
    for address in addresses:
        host = address.rsplit(":", 1)[0].strip("[]")
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise ValueError(
                f"target {address!r} in a list must be IP:PORT; to balance over the addresses "
                "of a name, give one dns:///NAME:PORT target"
            ) from None
    if len(families) != 1:
        raise ValueError(f"targets {target!r} mix IPv4 and IPv6 addresses")
    return f"ipv{families.pop()}:{','.join(addresses)}"


def aio_channel(target: str, security: Security | None = None) -> grpc.aio.Channel:
    security = security or Security()
    options = CHANNEL_OPTIONS + ([ROUND_ROBIN] if balanced(target) else [])
    target = channel_target(target)
    if security.tls:
        return grpc.aio.secure_channel(target, security.credentials(), options)
    return grpc.aio.insecure_channel(target, options)


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
        """inputs [batch, time, features] float32, or token ids [batch, time] (any integer
        dtype) for a text model; options: lengths, output, version, return_state, ..."""
        request = predict_request(model, inputs, **options)
        metadata = self._metadata + affinity(options.get("sequence_id"))
        response = await self._stub.Predict(request, timeout=self.timeout, metadata=metadata)
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

    def stream(self) -> grpc.aio.StreamStreamCall[pb.PredictRequest, pb.PredictResponse]:
        """A PredictStream call: requests answered in order, on one connection."""
        return self._stub.PredictStream(metadata=self._metadata)

    def sequence(
        self, model: str, sequence_id: int | str, **options: Unpack[SequenceOptions]
    ) -> AsyncSequence:
        """A server-held sequence over one PredictStream: `await seq.step(chunk)`, the first
        step starting it (from `initial_state`, a Prediction's states, to continue one)."""
        return AsyncSequence(self.stream, model, sequence_id, **options)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class LstmClient(Blocking[AsyncLstmClient]):
    """Blocking client: `with LstmClient("localhost:50051") as c: c.predict("seed", x)`.
    The same methods as AsyncLstmClient, run on a private event-loop thread."""

    def __init__(
        self, target: str, timeout: float | None = 30.0, security: Security | None = None
    ) -> None:
        loop = LoopThread()

        async def open_client() -> AsyncLstmClient:  # the channel belongs to the loop thread
            return AsyncLstmClient(target, timeout, security)

        super().__init__(loop, loop.run(open_client()))

    predict = blocking(AsyncLstmClient.predict)
    list_models = blocking(AsyncLstmClient.list_models)
    describe = blocking(AsyncLstmClient.describe)
    health = blocking(AsyncLstmClient.health)

    def sequence(
        self, model: str, sequence_id: int | str, **options: Unpack[SequenceOptions]
    ) -> BlockingSequence:
        """A server-held sequence over one stream (see AsyncLstmClient.sequence)."""
        handle = self._inner.sequence(model, sequence_id, **options)
        return BlockingSequence(self._loop, handle)

    def close(self) -> None:
        if not self._loop.closed:
            self._loop.run(self._inner.close())
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
