"""Shared fixtures: the shipped seed model, the installed console scripts, and a real
lstm-serve (grpc.aio, ONNX Runtime) on an ephemeral port with a client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lstm_serving.client.client import AsyncLstmClient
from lstm_serving.server.app import LstmServer
from tests.helpers import SEED_REPOSITORY, start_server


@pytest.fixture(scope="session")
def seed_repository() -> Path:
    """The shipped model repository (models/seed/1/model.onnx)."""
    return SEED_REPOSITORY


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
    """A client of the module's `server` (this one, or a module's own of that name)."""
    async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
        yield client
