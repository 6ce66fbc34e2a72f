"""The load generator against a real in-process server: every protocol and mode adds up."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_serving.client.load import generator, workload
from lstm_serving.client.load.command import server_split, table
from lstm_serving.client.load.verify import verify
from lstm_serving.server.app import LstmServer
from tests.helpers import SEED_REPOSITORY

SEED = SEED_REPOSITORY / "seed/1/model.onnx"


def test_length_distributions() -> None:
    rng = np.random.default_rng(0)
    assert workload.parse_lengths("full", 7, 3, rng).tolist() == [7, 7, 7]
    uniform = workload.parse_lengths("uniform:2:5", 5, 500, rng)
    assert uniform.min() == 2 and uniform.max() == 5
    assert sorted(set(workload.parse_lengths("list:3,9", 9, 10, rng).tolist())) == [3, 9]
    with pytest.raises(ValueError, match="use full, uniform"):
        workload.parse_lengths("normal:3", 5, 1, rng)


def test_server_split_is_a_difference_of_two_scrapes() -> None:
    before = {
        "lstm_queue_duration_seconds_sum": 1.0,
        "lstm_queue_duration_seconds_count": 10,
        "lstm_batch_size_sum": 10,
        "lstm_batch_size_count": 10,
    }
    after = {
        "lstm_queue_duration_seconds_sum": 1.5,
        "lstm_queue_duration_seconds_count": 20,
        "lstm_batch_size_sum": 50,
        "lstm_batch_size_count": 15,
    }
    split = server_split(before, after)
    assert split["queue_ms"] == pytest.approx(50.0) and split["mean_batch_size"] == 8.0
    assert split["compute_ms_per_batch"] == 0.0  # absent: no division by zero


def test_merging_client_processes_adds_counts() -> None:
    a = generator.LevelResult(8, 0.0, 2.0, 10, 20, {"UNAVAILABLE": 1}, latencies=[0.001] * 10)
    b = generator.LevelResult(
        8, 0.0, 2.5, 30, 60, {"UNAVAILABLE": 2, "INTERNAL": 1}, latencies=[0.003] * 30
    )
    a.merge(b)
    assert (a.requests, a.sequences, a.seconds) == (40, 80, 2.5)
    assert a.errors == {"UNAVAILABLE": 3, "INTERNAL": 1}
    assert a.latency_ms["p50"] == pytest.approx(3.0)


@pytest.mark.parametrize("protocol", ["lstm", "v2", "v2-stream"])
async def test_each_protocol_closed_loop_with_verification(
    server: LstmServer, protocol: str
) -> None:
    spec = workload.LoadSpec(
        target=f"127.0.0.1:{server.port}",
        model="seed",
        protocol=protocol,
        batch_size=3,
        time_steps=12,
        lengths="uniform:1:12",
        duration=1.0,
        warmup=0.2,
        output="both",
        channels=2,
    )
    result = await generator.run_level(spec, concurrency=8, progress=False, keep_answers=50)
    assert result.errors == {} and result.requests > 20
    assert result.sequences == 3 * result.requests
    assert len(result.latencies) == result.requests
    check = verify(workload.Workload(spec), result.answers, SEED)
    assert check.checked == 50 and check.wrong == 0 and check.max_abs_diff == 0.0


async def test_verification_catches_wrong_answers(server: LstmServer) -> None:
    spec = workload.LoadSpec(
        target=f"127.0.0.1:{server.port}", model="seed", duration=0.5, warmup=0.1
    )
    result = await generator.run_level(spec, concurrency=2, progress=False, keep_answers=10)
    other = workload.Workload(spec, seed=1)
    assert verify(other, result.answers, SEED).wrong == 10  # other inputs: all wrong


async def test_open_loop_holds_its_rate(server: LstmServer) -> None:
    spec = workload.LoadSpec(
        target=f"127.0.0.1:{server.port}", model="seed", duration=1.5, warmup=0.3
    )
    result = await generator.run_level(spec, rate=200.0, progress=False)
    assert result.errors == {}
    assert result.requests_per_second == pytest.approx(200, rel=0.15)
    assert result.rate == 200.0 and "200/s" in table([result])
