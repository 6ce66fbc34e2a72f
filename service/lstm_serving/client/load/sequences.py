"""The sequence workload of `lstm-client load --sequences N`: N server-held sequences at once,
each caller stepping its sequence chunk by chunk (each chunk answered before the next, as a
stream of sensor readings would be), then starting the next sequence.

Protocols: `lstm` (unary Predict with a Sequence), `lstm-stream` (one PredictStream per
caller), `v2` (ModelInfer with Triton's sequence parameters), `v2-stream` (one
ModelStreamInfer per caller). A request is one chunk; latency is per chunk.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

import grpc
import numpy as np

from lstm_serving.client.messages import affinity, predict_request
from lstm_serving.contract import LAST_HIDDEN
from lstm_serving.core.requests import SequenceStep
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from lstm_serving.proto.v1 import lstm_pb2_grpc as pb_grpc
from lstm_serving.protocols import kserve_v2

SEQUENCE_PROTOCOLS = ("lstm", "lstm-stream", "v2", "v2-stream")
Metadata = tuple[tuple[str, str], ...]


class Recorder(Protocol):
    def ok(self, started: float, index: int, response: object) -> None: ...

    def failed(self, code: str) -> None: ...


class SequenceWork:
    """Chunks of `variants` random sequences of `time_steps` steps, `chunk` steps a call."""

    def __init__(
        self,
        model: str,
        protocol: str,
        time_steps: int,
        chunk: int,
        features: int,
        variants: int = 16,
        seed: int = 0,
    ) -> None:
        if protocol not in SEQUENCE_PROTOCOLS:
            raise ValueError(
                f"protocol {protocol!r}: sequences use {', '.join(SEQUENCE_PROTOCOLS)}"
            )
        rng = np.random.default_rng(seed)
        self.model, self.protocol = model, protocol
        self.inputs = rng.standard_normal((variants, 1, time_steps, features)).astype(np.float32)
        self.bounds = [(a, min(a + chunk, time_steps)) for a in range(0, time_steps, chunk)]

    def request(self, variant: int, n: int, sequence_id: int) -> Any:
        """Chunk n of a sequence of variant `variant`, START on the first, END on the last."""
        a, b = self.bounds[n]
        x = self.inputs[variant % len(self.inputs), :, a:b]
        start, end = n == 0, n == len(self.bounds) - 1
        if self.protocol.startswith("lstm"):
            return predict_request(
                self.model, x, sequence_id=sequence_id, sequence_start=start, sequence_end=end
            )
        step = SequenceStep(sequence_id, start, end)
        return kserve_v2.build_infer_request(self.model, x, outputs=[LAST_HIDDEN], sequence=step)

    async def caller(
        self,
        channel: grpc.aio.Channel,
        caller: int,
        stop_at: Callable[[], float],
        record: Recorder,
        rpc_timeout: float,
        metadata: Metadata,
        clock: Callable[[], float],
    ) -> None:
        """Sequences one after another until stop_at; each ends (END) before the next."""
        steps = self._stepper(channel, rpc_timeout, metadata)
        await steps.asend(None)
        index, number = 0, 0
        while clock() < stop_at():
            number += 1
            sequence_id = caller * 1_000_000_000 + number
            for n in range(len(self.bounds)):
                started = clock()
                try:
                    response = await steps.asend(
                        (self.request(number, n, sequence_id), sequence_id)
                    )
                except grpc.aio.AioRpcError as exc:
                    record.failed(exc.code().name)
                    steps = self._stepper(channel, rpc_timeout, metadata)  # a fresh stream
                    await steps.asend(None)
                    break
                if isinstance(response, v2.ModelStreamInferResponse) and response.error_message:
                    record.failed(response.error_message.split(":", 1)[0])
                    break
                record.ok(started, index, response)
                index += 1
        await steps.aclose()

    async def _stepper(
        self, channel: grpc.aio.Channel, rpc_timeout: float, metadata: Metadata
    ) -> AsyncGenerator[object, Any]:
        """A coroutine that answers each request sent into it: unary calls, or one stream."""
        if self.protocol in ("lstm", "v2"):
            stub: Any = (
                pb_grpc.LstmServiceStub(channel)
                if self.protocol == "lstm"
                else v2_grpc.GRPCInferenceServiceStub(channel)
            )
            call = stub.Predict if self.protocol == "lstm" else stub.ModelInfer
            request, sequence_id = yield None
            while True:
                headers = metadata + affinity(sequence_id)  # for a balancer in front
                answer = await call(request, timeout=rpc_timeout, metadata=headers)
                request, sequence_id = yield answer
        stream: Any = (
            pb_grpc.LstmServiceStub(channel).PredictStream(metadata=metadata)
            if self.protocol == "lstm-stream"
            else v2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(metadata=metadata)
        )
        try:
            request, _ = yield None
            while True:
                await stream.write(request)
                request, _ = yield await stream.read()
        finally:
            stream.cancel()
