"""The load generator behind `lstm-client load`.

Closed loop (`concurrency` callers, each sending its next request when the last is answered)
or open loop (`rate` requests/s on a fixed schedule, whatever the answers do, so overload can
be studied; latency counts from the scheduled send, so a slow server cannot hide its queue).
Protocols: `lstm` (lstm.v1 Predict), `v2` (KServe v2 ModelInfer) and `v2-stream` (ModelInfer
requests pipelined on one ModelStreamInfer stream per channel, `concurrency` in flight).
Requests are built before the clock starts, so the client spends its time on gRPC.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import numpy as np

from lstm_serving.client.client import Security, aio_channel
from lstm_serving.client.load.sequences import SequenceWork
from lstm_serving.client.load.workload import LoadSpec, Workload

PERCENTILES = (50, 90, 95, 99)


@dataclass
class LevelResult:
    concurrency: int  # closed loop: callers; stream: messages in flight per stream
    rate: float  # open loop: requests/s asked for; 0 for closed loop
    seconds: float
    requests: int
    sequences: int
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list, repr=False)  # seconds, raw
    answers: list[tuple[int, object]] = field(default_factory=list, repr=False)  # to verify

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def sequences_per_second(self) -> float:
        return self.sequences / self.seconds if self.seconds else 0.0

    def summarize(self) -> None:
        ms = np.array(self.latencies) * 1000 if self.latencies else np.zeros(1)
        self.latency_ms = {f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES}
        self.latency_ms["max"] = float(ms.max())

    def merge(self, other: LevelResult) -> None:
        """Adds another client process's share of the same level."""
        self.seconds = max(self.seconds, other.seconds)
        self.requests += other.requests
        self.sequences += other.sequences
        self.errors = dict(Counter(self.errors) + Counter(other.errors))
        self.latencies += other.latencies
        self.summarize()

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["latencies"], out["answers"]
        return {
            **out,
            "requests_per_second": self.requests_per_second,
            "sequences_per_second": self.sequences_per_second,
        }


class _Recorder:
    """Counts only what completes inside the measured window."""

    def __init__(self, keep_answers: int) -> None:
        self.measuring = False
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.answers: list[tuple[int, object]] = []
        self.keep_answers = keep_answers

    def ok(self, started: float, index: int, response: object) -> None:
        if self.measuring:
            self.latencies.append(time.perf_counter() - started)
            if len(self.answers) < self.keep_answers:
                self.answers.append((index, response))

    def failed(self, code: str) -> None:
        if self.measuring:
            self.errors[code] += 1


async def run_level(
    spec: LoadSpec,
    concurrency: int = 1,
    rate: float = 0.0,
    progress: bool = True,
    keep_answers: int = 0,
    seed: int = 0,
) -> LevelResult:
    """One level: closed loop with `concurrency` callers, or open loop at `rate` when > 0;
    with spec.chunk, `concurrency` server-held sequences stepped chunk by chunk."""
    sequences = (
        SequenceWork(
            spec.model, spec.protocol, spec.time_steps, spec.chunk, spec.features, seed=seed
        )
        if spec.chunk
        else None
    )
    work = Workload(spec, seed) if sequences is None else None
    channels = [aio_channel(spec.target, spec.security) for _ in range(spec.channels)]
    metadata = (spec.security or Security()).metadata()
    record = _Recorder(keep_answers)
    stop_at = float("inf")

    async def call(channel_index: int, index: int, started: float) -> None:
        assert work is not None
        try:
            response = await work.call(channels[channel_index], index, spec.timeout, metadata)
            record.ok(started, index, response)
        except grpc.aio.AioRpcError as exc:
            record.failed(exc.code().name)

    async def closed(caller: int) -> None:
        index = caller
        while time.perf_counter() < stop_at:
            await call(caller % len(channels), index, time.perf_counter())
            index += concurrency

    async def open_loop() -> None:
        tasks: set[asyncio.Task[None]] = set()
        begin, index = time.perf_counter(), 0
        while (due := begin + index / rate) < stop_at:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            task = asyncio.ensure_future(call(index % len(channels), index, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
        await asyncio.gather(*tasks)

    async def stream(channel_index: int) -> None:
        assert work is not None
        await work.stream(
            channels[channel_index], concurrency, lambda: stop_at, record, spec.timeout, metadata
        )

    async def sequence(caller: int) -> None:
        assert sequences is not None
        channel = channels[caller % len(channels)]
        await sequences.caller(
            channel, caller, lambda: stop_at, record, spec.timeout, metadata, time.perf_counter
        )

    try:
        for channel in channels:
            await channel.channel_ready()
        stop_at = time.perf_counter() + spec.warmup + spec.duration
        if sequences is not None:
            tasks = [asyncio.ensure_future(sequence(i)) for i in range(concurrency)]
        elif rate > 0:
            tasks = [asyncio.ensure_future(open_loop())]
        elif spec.protocol == "v2-stream":
            tasks = [asyncio.ensure_future(stream(i)) for i in range(len(channels))]
        else:
            tasks = [asyncio.ensure_future(closed(i)) for i in range(concurrency)]
        await asyncio.sleep(spec.warmup)
        record.measuring, began = True, time.perf_counter()
        await _report_progress(stop_at, began, record, concurrency, rate, progress)
        seconds = time.perf_counter() - began
        record.measuring = False
        await asyncio.gather(*tasks)
    finally:
        for channel in channels:
            await channel.close()
    result = LevelResult(
        concurrency,
        rate,
        seconds,
        len(record.latencies),
        len(record.latencies) * spec.batch_size,
        dict(record.errors),
        latencies=record.latencies,
        answers=record.answers,
    )
    result.summarize()
    return result


async def _report_progress(
    stop_at: float, began: float, record: _Recorder, concurrency: int, rate: float, progress: bool
) -> None:
    level = f"rate {rate:g}/s" if rate > 0 else f"concurrency {concurrency}"
    while (now := time.perf_counter()) < stop_at:
        await asyncio.sleep(min(1.0, stop_at - now))
        if progress:
            elapsed = time.perf_counter() - began
            print(
                f"\r  {level:>18}  {elapsed:5.1f}s  {len(record.latencies) / elapsed:9.0f} "
                f"req/s  errors {sum(record.errors.values())}   ",
                end="",
                file=sys.stderr,
                flush=True,
            )
    if progress:
        print(file=sys.stderr)


def run_level_in_processes(
    spec: LoadSpec,
    processes: int,
    concurrency: int,
    rate: float,
    progress: bool,
    keep_answers: int,
) -> LevelResult:
    """Splits one level over client processes (each with its own channels); merges them."""
    if processes == 1:
        return asyncio.run(run_level(spec, concurrency, rate, progress, keep_answers))
    shares = [
        (spec, max(1, concurrency // processes), rate / processes, i) for i in range(processes)
    ]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        parts = pool.map(_level_share, shares)
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    merged.concurrency, merged.rate = concurrency, rate
    return merged


def _level_share(args: tuple[LoadSpec, int, float, int]) -> LevelResult:
    spec, concurrency, rate, seed = args
    result = asyncio.run(run_level(spec, concurrency, rate, progress=False, seed=seed))
    result.answers = []
    return result
