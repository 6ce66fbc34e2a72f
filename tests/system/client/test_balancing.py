"""Client-side balancing: one client channel over several servers, with gRPC's round_robin."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from lstm_serving.client.client import AsyncLstmClient, channel_target
from lstm_serving.server.app import LstmServer
from tests.helpers import client as run_client
from tests.helpers import start_server


def _answered(server: LstmServer) -> float:
    value = server.metrics.registry.get_sample_value(
        "lstm_requests_total", {"model": "seed", "version": "1", "rpc": "Predict", "code": "OK"}
    )
    return value or 0.0


async def test_one_client_spreads_calls_over_every_server(seed_repository: Path) -> None:
    """Without a balancing policy a channel pins to its first address; round_robin gives every
    server a share, from the Python client and from lstm-client."""
    servers = [await start_server(repository=seed_repository) for _ in range(2)]
    target = ",".join(f"127.0.0.1:{server.port}" for server in servers)
    try:
        async with AsyncLstmClient(target) as client:
            for _ in range(40):
                await client.predict("seed", np.ones((1, 3, 2), np.float32))
        counts = [_answered(server) for server in servers]
        assert sum(counts) == 40 and min(counts) >= 10, counts
        load = await asyncio.to_thread(
            run_client,
            servers[0].port,
            "--target",
            target,
            "load",
            "seed",
            "--concurrency",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0",
        )
        assert load.returncode == 0, load.stderr
        more = [_answered(server) - count for server, count in zip(servers, counts, strict=True)]
        assert min(more) > 0.3 * max(more), more  # lstm-client load over one channel
    finally:
        for server in servers:
            await server.stop(grace=1)


def test_targets() -> None:
    assert channel_target("localhost:50051") == "localhost:50051"
    assert channel_target("dns:///lstm.ns.svc:50051") == "dns:///lstm.ns.svc:50051"
    assert channel_target("10.0.0.1:1, 10.0.0.2:1") == "ipv4:10.0.0.1:1,10.0.0.2:1"
    assert channel_target("[::1]:1,[::2]:1") == "ipv6:[::1]:1,[::2]:1"
    with pytest.raises(ValueError, match="give one dns:///NAME:PORT target"):
        channel_target("a.example:1,b.example:1")
    with pytest.raises(ValueError, match="mix IPv4 and IPv6"):
        channel_target("10.0.0.1:1,[::1]:1")
