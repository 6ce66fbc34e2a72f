"""--sequence-store redis://: server-held sequences in a real Redis (Debian's redis-server,
started here on a free port), shared by two servers: steps alternate between them and equal
the whole runs bit for bit; a server killed mid-sequence loses none; two steps of one
sequence at once on two servers give one answer and one ABORTED, never a lost update; idle
expiry and --max-sequences hold across servers; a store that goes away makes sequence steps
UNAVAILABLE (and its health service NOT_SERVING) while other calls are served, until it
returns."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import generate_latest

from lstm_serving.client.client import AsyncLstmClient, Prediction
from lstm_serving.server.app import SEQUENCE_STORE_SERVICE, LstmServer
from tests.helpers import (
    RedisServer,
    free_port,
    parse,
    start,
    start_server,
    stop,
    value,
    wait_serving,
)

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed (Debian package redis-server; `make system-deps`)",
)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    store = RedisServer(tmp_path)
    store.start()
    yield store
    store.stop()


@pytest.fixture
async def pair(
    redis: RedisServer, seed_repository: Path
) -> AsyncIterator[tuple[AsyncLstmClient, AsyncLstmClient]]:
    """Two servers sharing the store, and a client of each."""
    servers: list[LstmServer] = [
        await start_server(
            repository=seed_repository,
            sequence_store=redis.url,
            max_queue_delay_ms=2.0,
            max_sequence_length=20000,  # the race: steps long enough to overlap, and the whole
        )
        for _ in range(2)
    ]
    clients = [AsyncLstmClient(f"127.0.0.1:{s.port}") for s in servers]
    yield clients[0], clients[1]
    for client in clients:
        await client.close()
    for server in servers:
        await server.stop(grace=1)


def inputs(count: int, time: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, time, 2)).astype(np.float32)


def last_hidden(answer: Prediction) -> np.ndarray:
    assert answer.last_hidden is not None
    return answer.last_hidden


async def test_steps_alternate_between_servers_and_equal_the_whole_runs(
    pair: tuple[AsyncLstmClient, AsyncLstmClient],
) -> None:
    """64 interleaved sequences, 4 chunks each, chunk k of sequence i on server (i + k) % 2."""
    x = inputs(64, 12)
    whole = last_hidden(await pair[0].predict("seed", x))
    bounds = [(0, 3), (3, 5), (5, 9), (9, 12)]
    answers: list[np.ndarray] = []
    for k, (a, b) in enumerate(bounds):
        steps = [
            pair[(i + k) % 2].predict(
                "seed",
                x[i : i + 1, a:b],
                sequence_id=f"alt-{i}",
                sequence_start=k == 0,
                sequence_end=k == len(bounds) - 1,
            )
            for i in range(64)
        ]
        answers = [last_hidden(p)[0] for p in await asyncio.gather(*steps)]
    assert np.array_equal(np.stack(answers), whole)  # bit for bit


async def test_two_steps_of_one_sequence_at_once_give_one_answer_and_one_aborted(
    pair: tuple[AsyncLstmClient, AsyncLstmClient],
) -> None:
    x = inputs(1, 3 + 2 * 8000 + 2, seed=1)
    await pair[0].predict("seed", x[:, :3], sequence_id="race", sequence_start=True)
    racing = [x[:, 3:8003], x[:, 8003:16003]]
    outcomes = await asyncio.gather(
        *(
            c.predict("seed", chunk, sequence_id="race")
            for c, chunk in zip(pair, racing, strict=True)
        ),
        return_exceptions=True,
    )
    aborted = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    answered = [n for n, o in enumerate(outcomes) if isinstance(o, Prediction)]
    assert len(aborted) == 1 and len(answered) == 1, outcomes
    assert aborted[0].code() == grpc.StatusCode.ABORTED and "retry it" in str(aborted[0].details())
    # the state is the answered step's, as if the aborted one was never sent
    ran = racing[answered[0]]
    after = await pair[1].predict("seed", x[:, -2:], sequence_id="race", sequence_end=True)
    expected = await pair[0].predict("seed", np.concatenate([x[:, :3], ran, x[:, -2:]], axis=1))
    assert np.array_equal(last_hidden(after), last_hidden(expected))


async def test_idle_expiry_and_the_sequence_limit_hold_across_servers(
    redis: RedisServer, seed_repository: Path
) -> None:
    servers = [
        await start_server(
            repository=seed_repository,
            sequence_store=redis.url,
            max_sequences=2,
            sequence_idle_timeout=1.0,
        )
        for _ in range(2)
    ]
    a, b = (AsyncLstmClient(f"127.0.0.1:{s.port}") for s in servers)
    x = inputs(1, 2)
    try:
        await a.predict("seed", x, sequence_id="one", sequence_start=True)
        await b.predict("seed", x, sequence_id="two", sequence_start=True)
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await a.predict("seed", x, sequence_id="three", sequence_start=True)
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 open sequences (the limit, --max-sequences)" in str(full.value.details())
        await asyncio.sleep(1.6)
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await b.predict("seed", x, sequence_id="one")
        assert expired.value.code() == grpc.StatusCode.NOT_FOUND
        assert "expired after 1 s idle" in str(expired.value.details())
        await a.predict("seed", x, sequence_id="three", sequence_start=True)  # room again
    finally:
        for client in (a, b):
            await client.close()
        for server in servers:
            await server.stop(grace=1)


async def test_a_store_that_goes_away_fails_sequence_steps_only_until_it_returns(
    redis: RedisServer, pair: tuple[AsyncLstmClient, AsyncLstmClient]
) -> None:
    client = pair[0]
    x = inputs(1, 4)
    await client.predict("seed", x, sequence_id="kept", sequence_start=True)
    redis.stop()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.predict("seed", x, sequence_id="kept")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"the sequence store {redis.url} cannot be reached" in str(refused.value.details())
    assert last_hidden(await client.predict("seed", x)).shape == (1, 32)  # stateless: served
    deadline = time.monotonic() + 10
    while await client.health(SEQUENCE_STORE_SERVICE) != "NOT_SERVING":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert await client.health() == "SERVING"
    redis.start()  # back, empty (no persistence): new sequences start
    await client.predict("seed", x, sequence_id="new", sequence_start=True)
    while await client.health(SEQUENCE_STORE_SERVICE) != "SERVING":
        assert time.monotonic() < deadline + 10
        await asyncio.sleep(0.2)


def test_a_server_killed_mid_sequence_loses_none(redis: RedisServer, seed_repository: Path) -> None:
    """Two lstm-serve processes; after two steps on each, one is SIGKILLed: every sequence
    goes on on the other with no error and the whole run's answers."""
    ports = [free_port(), free_port()]
    processes = [start(seed_repository, p, "--sequence-store", redis.url) for p in ports]
    try:
        for process, port in zip(processes, ports, strict=True):
            wait_serving(process, port)
        x = inputs(16, 10, seed=2)
        bounds = [(0, 2), (2, 5), (5, 7), (7, 10)]

        async def run() -> tuple[np.ndarray, np.ndarray]:
            clients = [AsyncLstmClient(f"127.0.0.1:{p}") for p in ports]
            try:
                whole = last_hidden(await clients[0].predict("seed", x))
                answers: list[np.ndarray] = []
                for k, (a, b) in enumerate(bounds):
                    if k == 2:
                        processes[1].send_signal(signal.SIGKILL)
                        processes[1].wait(timeout=10)
                    on = [clients[(i + k) % 2] if k < 2 else clients[0] for i in range(16)]
                    steps = [
                        on[i].predict(
                            "seed", x[i : i + 1, a:b], sequence_id=i + 1, sequence_start=k == 0
                        )
                        for i in range(16)
                    ]
                    answers = [last_hidden(p)[0] for p in await asyncio.gather(*steps)]
                return whole, np.stack(answers)
            finally:
                for client in clients:
                    await client.close()

        whole, continued = asyncio.run(run())
        assert np.array_equal(continued, whole)
    finally:
        code, err = stop(processes[0])
        assert code == 0, err
        if processes[1].poll() is None:
            stop(processes[1])


async def test_a_batch_of_steps_costs_a_round_trip_not_one_per_step(
    redis: RedisServer, seed_repository: Path
) -> None:
    """Steps answered by one batch write their states in one pipeline (and steps that arrive
    together read in one): 32 concurrent steps take far fewer than their 64 commands' trips."""
    server = await start_server(
        repository=seed_repository, sequence_store=redis.url, max_queue_delay_ms=5.0
    )
    x = inputs(32, 2, seed=3)
    try:
        async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
            await asyncio.gather(
                *(
                    client.predict("seed", x[i : i + 1, :1], sequence_id=i + 1, sequence_start=True)
                    for i in range(32)
                )
            )
            before = round_trips(server)
            answers = await asyncio.gather(
                *(client.predict("seed", x[i : i + 1, 1:], sequence_id=i + 1) for i in range(32))
            )
            after = round_trips(server)
            whole = last_hidden(await client.predict("seed", x))
        assert np.array_equal(np.stack([last_hidden(a)[0] for a in answers]), whole)
        assert after - before < 40, after - before  # 64 without the pipeline
    finally:
        await server.stop(grace=1)


def round_trips(server: LstmServer) -> float:
    samples = parse(generate_latest(server.metrics.registry).decode())
    return value(samples, "lstm_sequence_store_seconds_count", result="ok")
