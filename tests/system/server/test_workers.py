"""`--workers`: the port held by the parent, and a worker killed under load (chaos)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from lstm_serving.client.load import generator, workload
from tests.helpers import SERVE, client, free_port, start, stop, wait_serving, worker_pids


def test_port_0_with_workers_serves_on_the_port_it_reports(
    seed_repository: Path, tmp_path: Path
) -> None:
    """The parent binds the port and holds it: nothing can take it before the workers listen."""
    log = tmp_path / "serve.log"
    flags = ["--host", "127.0.0.1", "--port", "0", "--device", "cpu", "--metrics-port", "0"]
    with log.open("w") as err:
        process = subprocess.Popen(
            [SERVE, "--repository", str(seed_repository), *flags, "--workers", "2"],
            stderr=err,
            text=True,
        )
    try:
        end = time.monotonic() + 30
        while not (found := re.search(r"started 2 workers on port (\d+)", log.read_text())):
            assert time.monotonic() < end and process.poll() is None, log.read_text()
            time.sleep(0.1)
        port = int(found.group(1))
        wait_serving(process, port)
        assert client(port, "predict", "seed", "--random", "1,3").returncode == 0
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    assert log.read_text().count(f"SERVING on 127.0.0.1:{port}") == 2


async def test_a_killed_worker_loses_only_its_in_flight_calls(seed_repository: Path) -> None:
    port = free_port()
    process = start(seed_repository, port, "--workers", "2")
    try:
        wait_serving(process, port)
        victim = int(worker_pids(process)[0])
        spec = workload.LoadSpec(
            target=f"127.0.0.1:{port}",
            model="seed",
            duration=4.0,
            warmup=0.2,
            channels=8,  # eight connections: the kernel spreads them over both workers
            timeout=5.0,
        )

        async def kill_soon() -> float:
            await asyncio.sleep(1.5)
            os.kill(victim, signal.SIGKILL)
            return time.monotonic()

        result, killed_at = await asyncio.gather(
            generator.run_level(spec, concurrency=16, progress=False), kill_soon()
        )
        assert set(result.errors) <= {"UNAVAILABLE"}, result.errors  # never a hang or CANCELLED
        assert result.errors.get("UNAVAILABLE", 0) < 100 < result.requests
        while len(worker_pids(process)) < 2 or str(victim) in worker_pids(process):
            assert time.monotonic() - killed_at < 10, "no replacement worker"
            await asyncio.sleep(0.1)
        for _ in range(6):  # fresh connections land on both workers, the new one included
            out = client(port, "predict", "seed", "--random", "1,3")
            assert out.returncode == 0, out.stderr
    finally:
        code, err = stop(process)
    assert code == 0, err
    assert re.search(r"exited with code -9 after [\d.]+ s; starting a new one", err)


def test_a_worker_that_cannot_load_is_replaced_with_backoff(
    seed_repository: Path, tmp_path: Path
) -> None:
    """A model file that cannot be loaded appears; a worker is killed: its replacements fail,
    ever more slowly (not hundreds a second), and the other worker serves throughout."""
    repository = tmp_path / "models"
    shutil.copytree(seed_repository, repository)
    port = free_port()
    process = start(repository, port, "--workers", "2")
    try:
        wait_serving(process, port)
        (repository / "seed/2").mkdir()
        (repository / "seed/2/model.onnx").write_bytes(b"not an ONNX file")
        os.kill(int(worker_pids(process)[0]), signal.SIGKILL)
        time.sleep(4)
        for _ in range(4):
            assert client(port, "predict", "seed", "--random", "1,3").returncode == 0
    finally:
        code, err = stop(process)
    assert code == 0 or code == 1  # the worker that could not load exited 1 itself
    failures = len(re.findall(r"exited with code 1 after", err))
    assert 2 <= failures <= 6, err[-3000:]  # 0 s, 0.5 s, 1 s, 2 s: not a fork loop
    assert "backoff: it keeps exiting soon after it starts" in err
