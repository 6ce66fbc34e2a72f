"""A server-held sequence outlives nothing it should not: the replica it lives on (failover
from the last returned state), and the token that started it (no other token can touch it);
and no one caller can hold every sequence."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import grpc
import numpy as np
import pytest

from lstm_serving.client.client import AsyncLstmClient, LstmClient, Security
from tests.helpers import RedisServer, free_port, start, start_server, stop, wait_serving


def test_failover_continues_on_another_server_from_the_last_returned_state(
    seed_repository: Path,
) -> None:
    """Server A holds the sequence and is SIGKILLed mid-sequence; the client starts it again
    on server B from the state A last returned: the rest equals the whole run."""
    x = np.random.default_rng(9).standard_normal((1, 30, 2)).astype(np.float32)
    port_a, port_b = free_port(), free_port()
    a, b = start(seed_repository, port_a), start(seed_repository, port_b)
    try:
        wait_serving(a, port_a)
        wait_serving(b, port_b)
        with LstmClient(f"127.0.0.1:{port_b}") as on_b:
            expected = on_b.predict("seed", x, output="both", return_state=True)
            with LstmClient(f"127.0.0.1:{port_a}", timeout=5) as on_a:
                checkpoint = None
                for n, (start_step, end_step) in enumerate([(0, 5), (5, 12)]):
                    checkpoint = on_a.predict(
                        "seed",
                        x[:, start_step:end_step],
                        sequence_id="failover",
                        sequence_start=n == 0,
                        return_state=True,
                    )
                a.send_signal(signal.SIGKILL)
                a.wait(timeout=10)
                with pytest.raises(grpc.RpcError) as gone:
                    on_a.predict("seed", x[:, 12:20], sequence_id="failover")
                assert gone.value.code() == grpc.StatusCode.UNAVAILABLE
            assert checkpoint is not None
            rest = on_b.predict(
                "seed",
                x[:, 12:],
                output="both",
                sequence_id="failover",
                sequence_start=True,
                sequence_end=True,
                initial_state=checkpoint.states,
            )
        assert expected.sequence is not None and rest.sequence is not None
        assert np.abs(rest.sequence - expected.sequence[:, 12:]).max() <= 1e-6
    finally:
        if a.poll() is None:
            stop(a)
        assert stop(b)[0] == 0


async def test_a_sequence_belongs_to_the_token_that_started_it(
    seed_repository: Path, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice-token\nbob-token\n")
    server = await start_server(repository=seed_repository, auth_token_file=tokens)
    target = f"127.0.0.1:{server.port}"
    x = np.ones((1, 3, 2), np.float32)
    try:
        async with (
            AsyncLstmClient(target, security=Security(token="alice-token")) as alice,
            AsyncLstmClient(target, security=Security(token="bob-token")) as bob,
        ):
            await alice.predict("seed", x, sequence_id=42, sequence_start=True)
            async with alice.sequence("seed", "stream-1") as mine:
                await mine.step(x[0])
            for sequence_id, end in ((42, False), (42, True), ("stream-1", False)):
                with pytest.raises(grpc.aio.AioRpcError) as err:  # as if it did not exist
                    await bob.predict("seed", x, sequence_id=sequence_id, sequence_end=end)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                assert "was never started" in str(err.value.details())
            await bob.predict("seed", x, sequence_id=42, sequence_start=True)  # bob's own 42
            done = await alice.predict("seed", x, sequence_id=42, sequence_end=True)
            assert done.last_hidden is not None
    finally:
        await server.stop(grace=1)


@pytest.mark.parametrize("store", ["in process", "redis"])
async def test_without_tokens_one_address_cannot_take_every_sequence(
    seed_repository: Path, tmp_path: Path, store: str
) -> None:
    """Before: without tokens every caller counted as one, so one client could open
    --max-sequences and lock every other out of starting one. Now each address has its own
    --max-sequences-per-owner (two clients here: over IPv4 and over IPv6 loopback), and a
    sequence counts against its starter whoever ends it."""
    if store == "redis" and shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (`make system-deps`)")
    redis = RedisServer(tmp_path)
    if store == "redis":
        redis.start()
    server = await start_server(
        repository=seed_repository,
        host="::",
        max_sequences_per_owner=2,
        sequence_store=redis.url if store == "redis" else "",
    )
    x = np.ones((1, 3, 2), np.float32)
    try:
        async with (
            AsyncLstmClient(f"127.0.0.1:{server.port}") as ipv4,
            AsyncLstmClient(f"[::1]:{server.port}") as ipv6,
        ):
            for n in (1, 2):
                await ipv4.predict("seed", x, sequence_id=n, sequence_start=True)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ipv4.predict("seed", x, sequence_id=3, sequence_start=True)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "you hold 2 open sequences" in str(err.value.details())
            await ipv6.predict("seed", x, sequence_id=3, sequence_start=True)  # not locked out
            await ipv6.predict("seed", x, sequence_id=1, sequence_end=True)  # no token: shared
            await ipv4.predict("seed", x, sequence_id=4, sequence_start=True)  # its place back
    finally:
        await server.stop(grace=1)
        if store == "redis":
            redis.stop()
