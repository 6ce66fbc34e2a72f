"""Closed-loop load generator behind `lstm-client load`: a concurrency sweep over lstm.v1.

Each level runs `concurrency` callers that send a request, wait for its answer and send the
next, for a warm-up and then `duration` seconds. Requests are built once, before the clock
starts, so the client spends its time on gRPC, not on numpy.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import grpc
import numpy as np

from lstm.v1 import lstm_pb2 as pb
from lstm.v1 import lstm_pb2_grpc as pb_grpc
from service.client import predict_request

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LoadSpec:
    target: str
    model: str
    batch_size: int = 1
    time_steps: int = 10
    features: int = 2
    output: str = "last_hidden"
    duration: float = 10.0
    warmup: float = 2.0
    channels: int = 1
    variants: int = 64  # distinct random inputs cycled through


@dataclass
class LevelResult:
    concurrency: int
    seconds: float
    requests: int
    sequences: int
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def sequences_per_second(self) -> float:
        return self.sequences / self.seconds

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "requests_per_second": self.requests_per_second,
            "sequences_per_second": self.sequences_per_second,
        }


def build_requests(spec: LoadSpec, seed: int = 0) -> list[pb.PredictRequest]:
    rng = np.random.default_rng(seed)
    shape = (spec.batch_size, spec.time_steps, spec.features)
    return [
        predict_request(
            spec.model, rng.standard_normal(shape).astype(np.float32), output=spec.output
        )
        for _ in range(spec.variants)
    ]


async def run_level(spec: LoadSpec, concurrency: int, progress: bool = True) -> LevelResult:
    """One closed-loop level; answers that are not OK are counted by status code."""
    requests = build_requests(spec)
    channels = [grpc.aio.insecure_channel(spec.target) for _ in range(spec.channels)]
    stubs = [pb_grpc.LstmServiceStub(channel) for channel in channels]
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    measuring = False
    stop_at = float("inf")

    async def caller(index: int) -> None:
        stub = stubs[index % len(stubs)]
        i = index
        while time.perf_counter() < stop_at:
            request = requests[i % len(requests)]
            i += concurrency
            started = time.perf_counter()
            try:
                await stub.Predict(request, timeout=30)
                if measuring:
                    latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError as exc:
                if measuring:
                    errors[exc.code().name] += 1

    try:
        for channel in channels:
            await channel.channel_ready()
        stop_at = time.perf_counter() + spec.warmup + spec.duration
        tasks = [asyncio.ensure_future(caller(i)) for i in range(concurrency)]
        await asyncio.sleep(spec.warmup)
        measuring, began = True, time.perf_counter()
        while (now := time.perf_counter()) < stop_at:
            await asyncio.sleep(min(1.0, stop_at - now))
            if progress:
                elapsed = time.perf_counter() - began
                print(
                    f"\r  concurrency {concurrency:>4}  {elapsed:5.1f}s  "
                    f"{len(latencies) / elapsed:9.0f} req/s  errors {sum(errors.values())}",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        seconds = time.perf_counter() - began
        measuring = False
        await asyncio.gather(*tasks)
    finally:
        for channel in channels:
            await channel.close()
    if progress:
        print(file=sys.stderr)
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    latency = {f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES}
    latency["max"] = float(ms.max())
    return LevelResult(
        concurrency,
        seconds,
        len(latencies),
        len(latencies) * spec.batch_size,
        dict(errors),
        latency,
    )


def table(results: list[LevelResult]) -> str:
    header = ["conc", "req/s", "seq/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms", "errors"]
    rows = [header] + [
        [
            str(r.concurrency),
            f"{r.requests_per_second:.0f}",
            f"{r.sequences_per_second:.0f}",
            *(f"{r.latency_ms[k]:.2f}" for k in ("p50", "p90", "p95", "p99", "max")),
            ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "0",
        ]
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )
