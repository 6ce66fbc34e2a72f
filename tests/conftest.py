"""Shared fixtures: the shipped seed model, the installed console scripts, and a real
lstm-serve (grpc.aio, ONNX Runtime) on an ephemeral port with a client for it."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lstm_serving.client.client import AsyncLstmClient
from lstm_serving.core.settings import Settings
from lstm_serving.server.app import LstmServer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def seed_repository() -> Path:
    """The shipped model repository (models/seed/1/model.onnx)."""
    return ROOT / "models"


async def start_server(**overrides: Any) -> LstmServer:
    """Loopback, ephemeral port, no /metrics endpoint (tests read the registry directly)."""
    settings = Settings(
        **{"host": "127.0.0.1", "port": 0, "metrics_port": 0, "device": "cpu", **overrides}
    )
    server = LstmServer(settings)
    await server.start()
    await server.load()
    return server


@pytest.fixture(scope="module")
async def server(seed_repository: Path) -> AsyncIterator[LstmServer]:
    """Batching forced on (5 ms delay) so concurrent requests share batches."""
    server = await start_server(
        repository=seed_repository, max_queue_delay_ms=5.0, max_batch_size=32
    )
    yield server
    await server.stop(grace=1)


@pytest.fixture(scope="module")
async def client(server: LstmServer) -> AsyncIterator[AsyncLstmClient]:
    async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
        yield client
