"""Graceful drain under load, and a worker that dies being replaced."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from lstm_serving.client.client import AsyncLstmClient, LstmClient
from tests.helpers import free_port, start, stop, wait_serving, worker_pids


async def test_sigterm_under_load_loses_no_accepted_request(seed_repository: Path) -> None:
    """Every call is answered OK, or refused UNAVAILABLE once draining began: none is lost."""
    port = free_port()
    process = start(
        seed_repository, port, "--grace-period", "10", "--max-queue-delay-ms", "20"
    )  # batches wait: many calls are in flight
    wait_serving(process, port)
    outcomes: Counter[str] = Counter()
    sent_after_signal = asyncio.Event()

    async def caller(client: AsyncLstmClient) -> None:
        x = np.ones((2, 8, 2), np.float32)
        while True:
            try:
                result = await client.predict("seed", x)
                assert result.last_hidden is not None and result.last_hidden.shape == (2, 32)
                outcomes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                outcomes[exc.code().name] += 1
                if sent_after_signal.is_set():
                    return

    async with AsyncLstmClient(f"127.0.0.1:{port}", timeout=20) as client:
        callers = [asyncio.ensure_future(caller(client)) for _ in range(32)]
        await asyncio.sleep(1.0)
        before = outcomes["OK"]
        process.send_signal(signal.SIGTERM)
        sent_after_signal.set()
        await asyncio.wait_for(asyncio.gather(*callers), timeout=30)
    code = await asyncio.to_thread(process.wait, 30)
    _, err = process.communicate()
    assert code == 0, err
    assert before > 50 and outcomes["OK"] >= before
    assert set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes  # refused, never lost
    assert "draining" in err and "stopped" in err


def test_a_killed_worker_is_replaced(seed_repository: Path) -> None:
    port = free_port()
    process = start(seed_repository, port, "--workers", "2")
    try:
        wait_serving(process, port)
        first = worker_pids(process)
        assert len(first) == 2
        os.kill(int(first[0]), signal.SIGKILL)
        end = time.monotonic() + 20
        while not (len(now := worker_pids(process)) == 2 and first[0] not in now):
            assert time.monotonic() < end, "no replacement worker"
            time.sleep(0.1)
        assert first[1] in now
        wait_serving(process, port)
        for _ in range(10):  # fresh connections reach both workers, the new one included
            with LstmClient(f"127.0.0.1:{port}") as client:
                assert client.predict("seed", np.ones((1, 2, 2), np.float32)).version == 1
    finally:
        code, err = stop(process)
    assert code == 0, err
    assert re.search(r"exited with code -9 after [\d.]+ s; starting a new one\n", err)
