"""A client from another language: examples/node (Node.js, @grpc/grpc-js, the .proto files
read at run time) against a real server, its answers compared with the Python client's."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lstm_serving.client.client import AsyncLstmClient
from tests.helpers import ROOT, export_text_model, start_server

EXAMPLE = ROOT / "examples/node"
pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are not installed (the Node.js example needs them)",
)


def run_example(port: int, *models: str) -> Any:
    """npm ci (the pinned lock file), then the example as a user runs it."""
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=EXAMPLE,
        check=True,
        capture_output=True,
        timeout=300,
    )
    done = subprocess.run(
        ["node", "client.js", f"127.0.0.1:{port}", *models],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _array(tensor: Any) -> np.ndarray:
    return np.asarray(tensor["values"], np.float32).reshape(tensor["shape"])


async def test_the_node_example_gets_the_python_clients_answers(
    seed_repository: Path, tmp_path: Path
) -> None:
    shutil.copytree(seed_repository / "seed", tmp_path / "models/seed")
    export_text_model(tmp_path / "models")
    server = await start_server(repository=tmp_path / "models")
    try:
        result = await asyncio.to_thread(run_example, server.port, "seed", "text")
        x = (np.arange(12) % 7 / 7).astype(np.float32).reshape(2, 3, 2)  # as client.js makes it
        async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
            expected = (await client.predict("seed", x, lengths=[3, 2])).last_hidden
            prefix = (await client.predict("seed", x[:1, :2])).last_hidden
            text = (await client.predict("text", np.array([[3, 7, 1, 12]]))).prediction
    finally:
        await server.stop(grace=1)
    assert text is not None and np.array_equal(_array(result["tokens"]), text)
    assert expected is not None and prefix is not None
    assert result["models"] == [
        {"name": "seed", "versions": [1]},
        {"name": "text", "versions": [1]},
    ]
    assert result["layers"] == [64, 32]
    assert np.array_equal(_array(result["raw"]), expected)  # raw bytes, bit for bit
    assert np.array_equal(_array(result["values"]), expected)  # `values`, the same
    first, last = result["sequence"]
    np.testing.assert_allclose(_array(first), prefix, atol=1e-6)  # a server-held sequence
    np.testing.assert_allclose(_array(last), expected[:1], atol=1e-6)
    refused = result["refused"]
    assert refused["code"] == "INVALID_ARGUMENT"
    assert "this model takes 2" in refused["details"]
