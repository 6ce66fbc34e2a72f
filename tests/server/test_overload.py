"""Overload: about 3x capacity, open loop. Excess is refused fast (RESOURCE_EXHAUSTED), the
accepted keep bounded latency, and the server recovers as soon as the load drops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import numpy as np
import onnx
import pytest
import torch

from lstm_serving.client import loadgen, loadwork
from lstm_serving.client.client import AsyncLstmClient
from lstm_serving.export import StackedLSTM, build_model
from tests.processes import free_port, start, stop, wait_serving


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A heavier model (64 -> 256 -> 256, T=100): ONNX Runtime, not Python, sets capacity."""
    repository = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    path = repository / "wide/1/model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(build_model(StackedLSTM(64, [256, 256]).eval()), str(path))
    port = free_port()
    process = start(
        repository,
        port,
        "--max-batch-size",
        "4",
        "--max-queue-size",
        "16",
        "--intra-op-threads",
        "1",
    )
    try:
        wait_serving(process, port)
        yield f"127.0.0.1:{port}"
    finally:
        code, err = stop(process)
        assert code == 0, err


def spec(target: str, duration: float) -> loadwork.LoadSpec:
    return loadwork.LoadSpec(
        target=target, model="wide", features=64, time_steps=100, duration=duration, warmup=0.3
    )


async def test_three_times_capacity(slow_server: str) -> None:
    capacity = await loadgen.run_level(spec(slow_server, 1.5), concurrency=8, progress=False)
    assert capacity.errors == {}
    offered = 3 * capacity.requests_per_second

    async def probe() -> float:
        """Time for one call made in the middle of the overload to get its answer."""
        await asyncio.sleep(1.0)
        async with AsyncLstmClient(slow_server, timeout=10) as client:
            started = time.perf_counter()
            try:
                await client.predict("wide", np.ones((1, 100, 64), np.float32))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return time.perf_counter() - started

    overload, probe_seconds = await asyncio.gather(
        loadgen.run_level(spec(slow_server, 2.5), rate=offered, progress=False), probe()
    )
    refused = overload.errors.get("RESOURCE_EXHAUSTED", 0)
    assert set(overload.errors) <= {"RESOURCE_EXHAUSTED"}, overload.errors
    assert refused > overload.requests * 0.5  # most of the excess was refused...
    assert overload.requests_per_second > 0.6 * capacity.requests_per_second  # ...not work
    assert overload.latency_ms["p99"] < 1000  # the queue (16) bounds the accepted's wait
    assert probe_seconds < 1.0

    after = await loadgen.run_level(spec(slow_server, 1.0), concurrency=1, progress=False)
    assert after.errors == {}  # recovered at once
    assert after.latency_ms["p99"] < 100
