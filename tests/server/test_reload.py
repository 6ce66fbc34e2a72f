"""Model reload: new versions served, bad ones refused, removed ones drained; SIGHUP, polling."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from lstm_serving.client.client import AsyncLstmClient, LstmClient
from tests.conftest import start_server
from tests.processes import free_port, start, stop, wait_serving
from tests.server.test_metrics import parse, value

X = np.ones((1, 4, 2), np.float32)


@pytest.fixture
def repository(tmp_path: Path, seed_repository: Path) -> Path:
    shutil.copytree(seed_repository, tmp_path / "models")
    return tmp_path / "models"


def add_version(repository: Path, version: int, content: bytes | None = None) -> None:
    target = repository / f"seed/{version}/model.onnx"
    target.parent.mkdir(parents=True)
    source = (repository / "seed/1/model.onnx").read_bytes()
    target.write_bytes(source if content is None else content)


async def test_new_bad_and_removed_versions(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(repository=repository, max_queue_delay_ms=300.0)
    async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
        add_version(repository, 2)
        await server.reload()
        assert await client.list_models() == {"seed": [1, 2]}
        assert (await client.predict("seed", X)).version == 2  # version 0: the newest

        good = (repository / "seed/1/model.onnx").read_bytes()
        add_version(repository, 3, good[: len(good) // 2])  # a half-copied file
        await server.reload()
        await server.reload()  # unchanged: not tried again
        assert await client.list_models() == {"seed": [1, 2]}
        assert "rejected seed version 3" in caplog.text
        assert (await client.predict("seed", X)).version == 2  # still serving

        # Version 1 is removed while a request for it waits in its queue: it is answered.
        pending = asyncio.ensure_future(client.predict("seed", X, version=1))
        await asyncio.sleep(0.05)
        shutil.rmtree(repository / "seed/1")
        await server.reload()
        assert (await pending).version == 1
        assert await client.list_models() == {"seed": [2]}

    samples = parse(generate_latest(server.metrics.registry).decode())
    await server.stop(grace=1)
    assert value(samples, "lstm_model_reloads_total", model="seed", result="loaded") == 1
    assert value(samples, "lstm_model_reloads_total", model="seed", result="rejected") == 1
    assert value(samples, "lstm_model_reloads_total", model="seed", result="removed") == 1
    assert (
        value(
            samples, "lstm_model_info", model="seed", version="1", provider="CPUExecutionProvider"
        )
        == 0
    )
    assert (
        value(
            samples, "lstm_model_info", model="seed", version="2", provider="CPUExecutionProvider"
        )
        == 1
    )


def _versions(port: int) -> list[int]:
    with LstmClient(f"127.0.0.1:{port}", timeout=5) as client:
        return client.list_models().get("seed", [])


def _until(condition: object, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.1)


def test_sighup_and_polling_in_a_server_process(repository: Path) -> None:
    port = free_port()
    hup = start(repository, port)
    polled_port = free_port()
    polled = start(repository, polled_port, "--reload-interval", "0.3")
    try:
        wait_serving(hup, port)
        wait_serving(polled, polled_port)
        add_version(repository, 2)
        _until(lambda: _versions(polled_port) == [1, 2])  # found by polling
        assert _versions(port) == [1]  # no polling here: nothing until SIGHUP
        hup.send_signal(signal.SIGHUP)
        _until(lambda: _versions(port) == [1, 2])
        shutil.rmtree(repository / "seed/2")
        _until(lambda: _versions(polled_port) == [1])
    finally:
        for process in (hup, polled):
            code, err = stop(process)
            assert code == 0, err
