"""What the load generator sends: the load's spec, and prebuilt requests per protocol.

Each of `variants` requests has its own random input and per-sequence lengths, kept so that
answers can be checked against a local ONNX Runtime run of the same model file (`verify`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import numpy as np

from lstm_serving.client.client import Security, predict_request
from lstm_serving.contract import LAST_HIDDEN, OUTPUT_CHOICES, SEQUENCE
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from lstm_serving.proto.v1 import lstm_pb2_grpc as pb_grpc
from lstm_serving.protocols import kserve_v2
from lstm_serving.protocols.lstm_v1 import tensor_to_array

PROTOCOLS = ("lstm", "v2", "v2-stream")


@dataclass(frozen=True)
class LoadSpec:
    target: str
    model: str
    protocol: str = "lstm"  # lstm, v2 or v2-stream
    batch_size: int = 1
    time_steps: int = 10
    lengths: str = "full"  # full, uniform:LO:HI or list:A,B,...
    features: int = 2
    vocabulary: int = 0  # > 0: a text model's, random token ids in 1..vocabulary-1 are sent
    output: str = LAST_HIDDEN  # a contract.OUTPUT_CHOICES key
    duration: float = 10.0
    warmup: float = 2.0
    channels: int = 1
    variants: int = 64  # distinct random requests cycled through
    chunk: int = 0  # > 0: server-held sequences of time_steps, this many steps a call
    timeout: float = 30.0
    security: Security | None = None  # TLS and token, as for LstmClient


class Recorder(Protocol):
    def ok(self, started: float, index: int, response: object) -> None: ...

    def failed(self, code: str) -> None: ...


def parse_lengths(spec: str, time_steps: int, batch: int, rng: np.random.Generator) -> np.ndarray:
    """full: all `time_steps`; uniform:LO:HI: each uniform in LO..HI; list:A,B,..: cycled."""
    kind, _, args = spec.partition(":")
    if kind == "full":
        return np.full(batch, time_steps, np.int32)
    if kind == "uniform":
        low, high = (int(v) for v in args.split(":"))
        return rng.integers(low, high + 1, size=batch).astype(np.int32)
    if kind == "list":
        values = [int(v) for v in args.split(",")]
        start = int(rng.integers(0, len(values)))
        return np.array([values[(start + i) % len(values)] for i in range(batch)], np.int32)
    raise ValueError(f"lengths {spec!r}: use full, uniform:LO:HI or list:A,B,...")


@dataclass(frozen=True)
class Case:
    inputs: np.ndarray  # [batch, time, features], or ids [batch, time]; time = the longest length
    lengths: np.ndarray  # [batch] int32


class Workload:
    """The requests of one load spec; the same `seed` gives the same requests (for --verify)."""

    def __init__(self, spec: LoadSpec, seed: int = 0) -> None:
        if spec.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {spec.protocol!r}: use one of {', '.join(PROTOCOLS)}")
        rng = np.random.default_rng(seed)
        self.protocol, self.output = spec.protocol, spec.output
        self.cases = []
        for _ in range(spec.variants):
            lens = parse_lengths(spec.lengths, spec.time_steps, spec.batch_size, rng)
            steps = int(lens.max())
            if spec.vocabulary:  # token ids; never 0, the id a mask_zero model skips
                shape: tuple[int, ...] = (spec.batch_size, steps)
                inputs = rng.integers(1, spec.vocabulary, size=shape, dtype=np.int64)
            else:
                shape = (spec.batch_size, steps, spec.features)
                inputs = rng.standard_normal(shape).astype(np.float32)
            self.cases.append(Case(inputs, lens))
        if spec.protocol == "lstm":
            self.requests: list[Any] = [
                predict_request(spec.model, c.inputs, lengths=c.lengths, output=spec.output)
                for c in self.cases
            ]
        else:
            self.requests = [
                self._v2_request(spec.model, c, str(i)) for i, c in enumerate(self.cases)
            ]
        self._stubs: dict[int, Any] = {}

    def _v2_request(self, model: str, case: Case, request_id: str) -> v2.ModelInferRequest:
        return kserve_v2.build_infer_request(
            model, case.inputs, case.lengths, OUTPUT_CHOICES[self.output], request_id=request_id
        )

    def _stub(self, channel: grpc.aio.Channel) -> Any:
        key = id(channel)
        if key not in self._stubs:
            make = (
                pb_grpc.LstmServiceStub
                if self.protocol == "lstm"
                else v2_grpc.GRPCInferenceServiceStub
            )
            self._stubs[key] = make(channel)
        return self._stubs[key]

    async def call(
        self,
        channel: grpc.aio.Channel,
        index: int,
        rpc_timeout: float,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> object:
        request = self.requests[index % len(self.requests)]
        stub = self._stub(channel)
        if self.protocol == "lstm":
            return await stub.Predict(request, timeout=rpc_timeout, metadata=metadata)
        return await stub.ModelInfer(request, timeout=rpc_timeout, metadata=metadata)

    async def stream(
        self,
        channel: grpc.aio.Channel,
        in_flight: int,
        stop_at: Callable[[], float],
        record: Recorder,
        rpc_timeout: float,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Pipelines requests on one stream with `in_flight` unanswered at most."""
        call = self._stub(channel).ModelStreamInfer(timeout=rpc_timeout + 3600, metadata=metadata)
        window = asyncio.Semaphore(in_flight)
        sent: deque[tuple[float, int]] = deque()

        async def write() -> None:
            index = 0
            while time.perf_counter() < stop_at():
                await window.acquire()
                sent.append((time.perf_counter(), index))
                await call.write(self.requests[index % len(self.requests)])
                index += 1
            await call.done_writing()

        writer = asyncio.ensure_future(write())
        async for message in call:
            started, index = sent.popleft()
            window.release()
            if message.error_message:
                record.failed(message.error_message.split(":", 1)[0])
            else:
                record.ok(started, index, message.infer_response)
        await writer

    def outputs(self, response: Any) -> dict[str, np.ndarray]:
        if self.protocol == "lstm":
            return {
                name: tensor_to_array(getattr(response, name), name)
                for name in (LAST_HIDDEN, SEQUENCE)
                if response.HasField(name)
            }
        return kserve_v2.decode_infer_response(response)
