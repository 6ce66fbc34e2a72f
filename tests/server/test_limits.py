"""Configurable limits: message size both ways, sequences per request, sequence length."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from lstm_serving.client.client import AsyncLstmClient
from tests.conftest import start_server


async def test_limits(seed_repository: Path) -> None:
    server = await start_server(
        repository=seed_repository,
        max_message_bytes=1024 * 1024,
        max_request_sequences=64,
        max_sequence_length=300,
    )
    try:
        async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
            cases = [
                # 4 x 300 x 2 x 4 bytes in is fine, but 200 x 32 x 4 x 64 bytes out is not
                ((64, 200, 2), "sequence", grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than"),
                ((2, 300, 2), "sequence", None, ""),
                (
                    (65, 1, 2),
                    "last_hidden",
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "65 sequences; the limit is 64 per request (--max-request-sequences)",
                ),
                (
                    (1, 301, 2),
                    "last_hidden",
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the limit is 300 (--max-sequence-length)",
                ),
            ]
            for shape, output, code, message in cases:
                x = np.ones(shape, np.float32)
                if code is None:
                    assert (await client.predict("seed", x, output=output)).sequence is not None
                    continue
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await client.predict("seed", x, output=output)
                assert err.value.code() == code and message in str(err.value.details()), shape
            huge = np.ones((60, 4000, 2), np.float32)  # 1.9 MB in: refused by gRPC itself
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.predict("seed", huge)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            ok = await client.predict("seed", np.ones((1, 3, 2), np.float32))  # still serving
            assert ok.last_hidden is not None
    finally:
        await server.stop(grace=1)
