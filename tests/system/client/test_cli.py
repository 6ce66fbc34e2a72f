"""`lstm-serve` and `lstm-client` as real processes: start, every subcommand, signals, failures.

Over 250 lines: one served fixture drives every subcommand's test.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.helpers import client, free_port, start, stop, wait_serving, worker_pids


@pytest.fixture(scope="module")
def served(seed_repository: Path) -> Iterator[int]:
    port = free_port()
    process = start(seed_repository, port)
    try:
        wait_serving(process, port)
        yield port
    finally:
        code, err = stop(process)
        assert code == 0, err
        assert "SERVING on 127.0.0.1" in err and "stopped" in err


def test_health_models_describe(served: int) -> None:
    assert client(served, "health").stdout.strip() == "SERVING"
    health = client(served, "--json", "health", "--service", "lstm.v1.LstmService")
    assert json.loads(health.stdout) == {"status": "SERVING"}
    models = client(served, "models")
    assert models.returncode == 0 and "seed" in models.stdout and "MODEL" in models.stdout
    assert json.loads(client(served, "--json", "models").stdout) == {"seed": [1]}
    described = client(served, "describe", "seed")
    assert "lstm_1: LSTM(32)  (None, None, 64)" in described.stdout
    assert "CPUExecutionProvider" in described.stdout and "17,152" in described.stdout
    as_json = json.loads(client(served, "--json", "describe", "seed").stdout)
    assert as_json["layers"][1]["inputSize"] == 64


def test_predict_random_and_from_file(served: int, tmp_path: Path, seed_repository: Path) -> None:
    out = client(
        served,
        "--json",
        "predict",
        "seed",
        "--random",
        "2,5",
        "--lengths",
        "5",
        "3",
        "--output",
        "both",
        "--return-state",
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert np.array(result["last_hidden"]).shape == (2, 32)
    assert np.array(result["sequence"]).shape == (2, 5, 32)
    assert np.array(result["state"][0]["h"]).shape == (1, 2, 64)
    x = np.random.default_rng(5).standard_normal((1, 4, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    text = client(served, "predict", "seed", "--input", str(tmp_path / "x.npy"))
    assert text.returncode == 0 and "last_hidden [1, 32]" in text.stdout
    exact = json.loads(
        client(served, "--json", "predict", "seed", "--input", str(tmp_path / "x.npy")).stdout
    )
    session = ort.InferenceSession(str(seed_repository / "seed/1/model.onnx"))
    zeros = {
        f"initial_{s}_{k}": np.zeros((1, 1, u), np.float32)
        for k, u in enumerate([64, 32])
        for s in "hc"
    }
    (expected,) = session.run(
        ["last_hidden"], {"input": x, "lengths": np.array([4], np.int32), **zeros}
    )
    np.testing.assert_allclose(exact["last_hidden"], expected, rtol=0, atol=1e-6)  # via JSON text


def test_client_errors(served: int, tmp_path: Path) -> None:
    missing = client(served, "predict", "nope", "--random", "1,2")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    bad = client(served, "predict", "seed", "--random", "1,3", "--lengths", "9")
    assert bad.returncode == 1 and "INVALID_ARGUMENT: lengths[0] is 9" in bad.stderr
    unreadable = client(served, "predict", "seed", "--input", str(tmp_path / "none.npy"))
    assert unreadable.returncode == 2 and "cannot read" in unreadable.stderr
    usage = client(served, "predict", "seed", "--random", "x")
    assert usage.returncode == 2 and "B,T" in usage.stderr


def test_taken_port_fails_loudly(seed_repository: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = start(seed_repository, port)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err and "in use" in err
    assert "Traceback" not in err and "Event loop is closed" not in err


def test_second_server_on_same_port_is_refused(served: int, seed_repository: Path) -> None:
    process = start(seed_repository, served)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1 and "cannot listen" in err


def test_cuda_device_fails_fast_without_cuda(seed_repository: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    process = start(seed_repository, free_port(), "--device", "cuda")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "no CUDAExecutionProvider" in err and "onnxruntime-gpu" in err


def test_empty_repository_fails_fast(tmp_path: Path) -> None:
    process = start(tmp_path, free_port())
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1 and "no models in" in err


def test_two_workers_share_the_port(seed_repository: Path) -> None:
    port = free_port()
    process = start(seed_repository, port, "--workers", "2")
    try:
        wait_serving(process, port)
        assert len(worker_pids(process)) == 2
        for _ in range(5):  # a fresh connection each time: the kernel spreads connections
            out = client(port, "predict", "seed", "--random", "1,3")
            assert out.returncode == 0, out.stderr
    finally:
        code, err = stop(process)
    assert code == 0, err
    assert err.count("SERVING on") == 2


def test_env_variables_configure_the_server(seed_repository: Path) -> None:
    port = free_port()
    env = {"LSTM_SERVE_MAX_BATCH_SIZE": "7", "LSTM_SERVE_PORT": str(port)}
    process = start(seed_repository, None, env=env)
    try:
        wait_serving(process, port)
        described = json.loads(client(port, "--json", "describe", "seed").stdout)
        assert described["batching"]["maxBatchSize"] == 7
    finally:
        assert stop(process)[0] == 0


def test_load_generator_smoke(served: int, tmp_path: Path) -> None:
    out = client(
        served,
        "--json",
        "load",
        "seed",
        "--concurrency",
        "1,4",
        "--duration",
        "1.5",
        "--warmup",
        "0.3",
        "--batch-size",
        "3",
        "--time",
        "7",
        "--json-file",
        str(tmp_path / "load.json"),
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert json.loads((tmp_path / "load.json").read_text()) == report
    assert [level["concurrency"] for level in report["levels"]] == [1, 4]
    for level in report["levels"]:
        assert level["errors"] == {} and level["requests"] > 20
        assert level["sequences"] == 3 * level["requests"]
        assert level["requests_per_second"] == pytest.approx(level["requests"] / level["seconds"])
        latency = level["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    table = client(
        served, "load", "seed", "--concurrency", "2", "--duration", "0.5", "--warmup", "0.1"
    )
    assert table.returncode == 0 and "req/s" in table.stdout and "p99 ms" in table.stdout


def test_health_of_an_unreachable_server_exits_3() -> None:
    port = free_port()  # reserved: nothing listens there
    out = client(port, "--timeout", "2", "health")
    assert out.returncode == 3 and out.stdout.strip() == "UNAVAILABLE", out
    assert "UNAVAILABLE" in out.stderr


def test_predict_on_an_unknown_model_is_a_predict_not_found(served: int) -> None:
    out = client(served, "predict", "nope", "--random", "1,3")
    assert out.returncode == 1 and "NOT_FOUND: model 'nope' is not loaded" in out.stderr
    version = client(served, "predict", "seed", "--random", "1,3", "--version", "9")
    assert version.returncode == 1 and "no version 9" in version.stderr


def test_load_help_shows_defaults_and_progress_stays_off_pipes(served: int) -> None:
    help_text = client(served, "load", "--help").stdout
    assert "(default: 10.0)" in help_text and "(default: 1,16,64)" in help_text
    out = client(served, "load", "seed", "--concurrency", "2", "--duration", "1.2", "--warmup", "0")
    assert out.returncode == 0 and "\r" not in out.stderr  # stderr is a pipe, not a terminal


def test_metrics_port_in_use_is_a_clear_start_failure(seed_repository: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        metrics_port = holder.getsockname()[1]
        process = start(seed_repository, free_port(), "--metrics-port", str(metrics_port))
        _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert f"cannot serve /metrics on 127.0.0.1:{metrics_port}" in err and "--metrics-port" in err
    assert "Traceback" not in err and "Event loop is closed" not in err
    assert "never awaited" not in err


def test_sequence_streams_a_file_in_chunks(served: int, tmp_path: Path) -> None:
    x = np.random.default_rng(4).standard_normal((23, 2)).astype(np.float32)
    np.save(tmp_path / "series.npy", x)
    np.save(tmp_path / "batch.npy", x[None])
    expected = json.loads(
        client(
            served,
            "--json",
            "predict",
            "seed",
            "--input",
            str(tmp_path / "batch.npy"),
            "--output",
            "sequence",
        ).stdout
    )["sequence"][0]
    out = client(
        served,
        "--json",
        "sequence",
        "seed",
        "--input",
        str(tmp_path / "series.npy"),
        "--chunk",
        "5",
        "--output",
        "sequence",
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [chunk["steps"] for chunk in report["chunks"]] == [
        [0, 5],
        [5, 10],
        [10, 15],
        [15, 20],
        [20, 23],
    ]
    got = np.concatenate([np.array(chunk["sequence"][0]) for chunk in report["chunks"]])
    np.testing.assert_allclose(got, np.array(expected), atol=1e-6)
    ended = client(served, "predict", "seed", "--random", "1,2")  # the server still serves
    assert ended.returncode == 0


@pytest.mark.parametrize("protocol", ["lstm", "lstm-stream", "v2", "v2-stream"])
def test_load_with_sequences(served: int, protocol: str) -> None:
    out = client(
        served,
        "--json",
        "load",
        "seed",
        "--sequences",
        "8",
        "--chunk",
        "2",
        "--time",
        "6",
        "--protocol",
        protocol,
        "--duration",
        "1.0",
        "--warmup",
        "0.2",
    )
    assert out.returncode == 0, out.stderr
    (level,) = json.loads(out.stdout)["levels"]
    assert level["errors"] == {} and level["concurrency"] == 8 and level["requests"] > 20


def test_metrics_listen_on_loopback_unless_told(seed_repository: Path) -> None:
    """--host 0.0.0.0 opens gRPC to every interface; /metrics (no auth) stays on loopback."""
    port, metrics_port = free_port(), free_port()
    process = start(seed_repository, port, "--host", "0.0.0.0", "--metrics-port", str(metrics_port))
    try:
        wait_serving(process, port)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            assert b"lstm_requests_total" in r.read()
    finally:
        code, err = stop(process)
    assert code == 0
    assert f"SERVING on 0.0.0.0:{port}" in err
    assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in err
