"""Model reload: new versions served, bad ones refused, removed ones drained; SIGHUP, polling."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from prometheus_client import generate_latest

from lstm_serving.client.client import AsyncLstmClient, LstmClient
from lstm_serving.contract import METADATA_KEY
from tests.helpers import free_port, parse, start, start_server, stop, value, wait_serving

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


def _with_metadata(source: bytes, change: object) -> bytes:
    """The model with its architecture record rewritten by `change` (record -> record)."""
    model = onnx.load_from_string(source)
    prop = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    prop.value = json.dumps(change(json.loads(prop.value)))  # type: ignore[operator]
    return model.SerializeToString()


def _renamed_output(source: bytes) -> bytes:
    model = onnx.load_from_string(source)
    for node in model.graph.node:
        node.output[:] = ["lh" if name == "last_hidden" else name for name in node.output]
    for output in model.graph.output:
        if output.name == "last_hidden":
            output.name = "lh"
    return model.SerializeToString()


async def test_files_that_cannot_be_served_are_refused_by_name_and_reload_goes_on(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Malformed metadata, metadata that disagrees with its graph, an output renamed, a FIFO
    whose read would never end, a version folder that is not a plain ASCII integer: each
    refused (or ignored) with a line naming the file, counted, never published; the reload
    task lives on to load a good one."""
    server = await start_server(repository=repository)
    source = (repository / "seed/1/model.onnx").read_bytes()
    bad = {
        2: _with_metadata(source, lambda record: "a JSON string"),
        3: _with_metadata(source, lambda record: {**record, "format_version": "x"}),
        4: _with_metadata(
            source,
            lambda record: {
                **record,
                "layers": [{**record["layers"][0], "units": 65}, *record["layers"][1:]],
            },
        ),
        5: _renamed_output(source),
    }
    for version, content in bad.items():
        add_version(repository, version, content)
    (repository / "seed/7").mkdir()
    os.mkfifo(repository / "seed/7/model.onnx")  # a read that would never end
    (repository / "seed/²").mkdir()
    (repository / "seed/²/model.onnx").write_bytes(source)
    try:
        await server.reload()
        async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
            assert await client.list_models() == {"seed": [1]}
            add_version(repository, 6)
            await server.reload()  # the reload task survived every bad file
            assert await client.list_models() == {"seed": [1, 6]}
            assert (await client.predict("seed", X)).version == 6
    finally:
        await server.stop(grace=1)
    assert "seed/7/model.onnx: not a regular file (a FIFO or a device?): refused" in caplog.text
    for version in bad:
        assert f"rejected seed version {version}" in caplog.text
        assert f"seed/{version}/model.onnx" in caplog.text
    assert "graph outputs" in caplog.text and "does not run as its metadata says" in caplog.text
    assert "ignored" in caplog.text and "seed/²/model.onnx" in caplog.text
    samples = parse(generate_latest(server.metrics.registry).decode())
    assert value(samples, "lstm_model_reloads_total", model="seed", result="rejected") == 5


async def test_a_served_file_changed_in_place_is_reloaded_or_refused(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a served model.onnx truncated in place went unnoticed until a restart, which
    then failed. Now a reload refuses the broken file (the copy in memory goes on serving) and
    serves a good replacement."""
    caplog.set_level(logging.INFO, logger="lstm_serving.core.repository")
    server = await start_server(repository=repository)
    path = repository / "seed/1/model.onnx"
    good = path.read_bytes()
    loaded = server.registry.served("seed", 1).model
    try:
        async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:

            async def answer() -> np.ndarray:
                hidden = (await client.predict("seed", X)).last_hidden
                assert hidden is not None
                return hidden

            expected = await answer()
            with path.open("r+b") as file:  # in place: the same inode, half of it left
                file.truncate(len(good) // 2)
            await server.reload()
            await server.reload()  # unchanged since refused: not tried again
            assert "rejected the changed file of seed version 1, still serving" in caplog.text
            assert server.registry.served("seed", 1).model is loaded
            assert np.array_equal(await answer(), expected)

            path.write_bytes(good)  # repaired in place, a second later
            later = path.stat().st_mtime_ns + 1_000_000_000
            os.utime(path, ns=(later, later))
            await server.reload()
            assert "reloaded seed version 1: its file changed in place" in caplog.text
            assert server.registry.served("seed", 1).model is not loaded
            assert np.array_equal(await answer(), expected)
    finally:
        await server.stop(grace=1)
    samples = parse(generate_latest(server.metrics.registry).decode())
    assert value(samples, "lstm_model_reloads_total", model="seed", result="rejected") == 1
    assert value(samples, "lstm_model_reloads_total", model="seed", result="loaded") == 1
