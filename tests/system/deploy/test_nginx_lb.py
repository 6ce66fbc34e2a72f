"""The load balancer's own nginx config, for real: two lstm-serve processes behind it."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from lstm_serving.client.client import AsyncLstmClient, LstmClient, predict_request
from lstm_serving.client.load import generator
from lstm_serving.client.load.workload import LoadSpec
from lstm_serving.core.runtime import Model
from lstm_serving.proto.v1 import lstm_pb2_grpc as pb_grpc
from tests.helpers import (
    ROOT,
    RedisServer,
    free_port,
    scrape,
    start,
    stop,
    value,
    wait_serving,
)

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def render(directory: Path, listen_port: int, upstream_ports: list[int]) -> Path:
    """deploy/nginx/nginx.conf with only its listen address made local; our own upstream list."""
    conf = (ROOT / "deploy/nginx/nginx.conf").read_text()
    assert conf.count("listen 50051 http2;") == 1
    (directory / "nginx.conf").write_text(
        conf.replace("listen 50051 http2;", f"listen 127.0.0.1:{listen_port} http2;")
    )
    (directory / "upstream.conf").write_text(
        "".join(f"server 127.0.0.1:{p};\n" for p in upstream_ports)
    )
    return directory / "nginx.conf"


@contextlib.contextmanager
def behind_nginx(
    repository: Path, directory: Path, *server_args: str
) -> Iterator[tuple[int, list[int]]]:
    """Two lstm-serve processes (with `server_args`) behind deploy/nginx's config: (the load
    balancer's port, each server's metrics port)."""
    if NGINX is None:
        pytest.skip(
            "nginx not installed (Debian package nginx; `make test` installs it when "
            "it runs as root with apt-get)"
        )
    ports = [free_port(), free_port()]
    metrics_ports = [free_port(), free_port()]
    servers = [
        start(repository, p, "--metrics-port", str(m), *server_args)
        for p, m in zip(ports, metrics_ports, strict=True)
    ]
    lb_port = free_port()
    conf = render(directory, lb_port, ports)
    nginx = None
    try:
        for server, port in zip(servers, ports, strict=True):
            wait_serving(server, port)
        nginx = subprocess.Popen(
            [
                NGINX,
                "-p",
                str(directory),
                "-c",
                str(conf),
                "-g",
                f"daemon off; pid {directory}/nginx.pid; error_log {directory}/error.log notice;",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.3)
        assert nginx.poll() is None, f"nginx exited: {nginx.communicate()[1]}"
        with grpc.insecure_channel(f"127.0.0.1:{lb_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=15)
        yield lb_port, metrics_ports
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(timeout=15)
        for server in servers:
            code, err = stop(server)
            assert code == 0, err


@pytest.fixture(scope="module")
def balanced(
    seed_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, list[int]]]:
    with behind_nginx(seed_repository, tmp_path_factory.mktemp("nginx")) as running:
        yield running


def test_answers_through_nginx_equal_direct_ones_and_both_replicas_serve(
    balanced: tuple[int, list[int]], seed_repository: Path
) -> None:
    lb_port, metrics_ports = balanced
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((2, 6, 2)).astype(np.float32) for _ in range(40)]
    with LstmClient(f"127.0.0.1:{lb_port}") as through_lb:  # one channel: nginx spreads calls
        answers = [through_lb.predict("seed", x, lengths=[6, 3], output="both") for x in inputs]
    model = Model(seed_repository / "seed/1/model.onnx", "seed", 1)
    for x, answer in zip(inputs, answers, strict=True):
        expected = model.run(x, np.array([6, 3], np.int32), ["last_hidden", "sequence"])
        assert answer.last_hidden is not None and answer.sequence is not None
        assert answer.last_hidden.tobytes() == expected["last_hidden"].tobytes()
        assert answer.sequence.tobytes() == expected["sequence"].tobytes()
    served = [
        value(scrape(m), "lstm_requests_total", model="seed", version="1", rpc="Predict", code="OK")
        for m in metrics_ports
    ]
    assert sum(served) == 40 and min(served) >= 10, served


async def test_load_through_nginx_has_no_errors(balanced: tuple[int, list[int]]) -> None:
    lb_port, metrics_ports = balanced
    before = [
        value(scrape(m), "lstm_requests_total", model="seed", version="1", rpc="Predict", code="OK")
        for m in metrics_ports
    ]
    spec = LoadSpec(target=f"127.0.0.1:{lb_port}", model="seed", duration=2.0, warmup=0.5)
    started = time.monotonic()
    result = await generator.run_level(spec, concurrency=8, progress=False)
    assert time.monotonic() - started < 30
    assert result.errors == {} and result.requests > 100
    after = [
        value(scrape(m), "lstm_requests_total", model="seed", version="1", rpc="Predict", code="OK")
        for m in metrics_ports
    ]
    assert all(a > b for a, b in zip(after, before, strict=True))  # both took part


async def test_unary_steps_of_a_sequence_stay_on_one_replica(
    balanced: tuple[int, list[int]],
) -> None:
    """With x-lstm-sequence-id (LstmClient sets it) every step meets its state; without it
    nginx spreads the steps and they land where the sequence does not exist."""
    lb_port, _ = balanced
    rng = np.random.default_rng(8)
    async with AsyncLstmClient(f"127.0.0.1:{lb_port}") as client:
        for n in range(12):  # twelve sequences, ten unary steps each, all through nginx
            x = rng.standard_normal((1, 10, 2)).astype(np.float32)
            whole = await client.predict("seed", x, output="sequence")
            for step in range(10):
                got = await client.predict(
                    "seed",
                    x[:, step : step + 1],
                    output="sequence",
                    sequence_id=f"lb-{n}",
                    sequence_start=step == 0,
                    sequence_end=step == 9,
                )
                assert got.sequence is not None and whole.sequence is not None
                assert np.abs(got.sequence - whole.sequence[:, step : step + 1]).max() <= 1e-6
        stub = pb_grpc.LstmServiceStub(client.channel)
        lost = 0
        for n in range(6):  # the same steps without the header: spread over both replicas
            for step in range(10):
                request = predict_request(
                    "seed", x[:, :1], sequence_id=f"spread-{n}", sequence_start=step == 0
                )
                try:
                    await stub.Predict(request)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND
                    lost += 1
        assert lost > 0  # P(none lost by chance) = (2 * 2**-10)**6


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_with_the_shared_store_unary_steps_go_to_any_replica(
    seed_repository: Path, tmp_path: Path
) -> None:
    """The compose topology with its redis: steps without the routing header, spread over
    both replicas by nginx, each meets its sequence's state (the header hash is then only an
    optimisation)."""
    redis = RedisServer(tmp_path)
    redis.start()
    store = redis.url
    try:
        with behind_nginx(seed_repository, tmp_path, "--sequence-store", store) as (lb, metrics):
            before = [_predicts(m) for m in metrics]
            rng = np.random.default_rng(9)
            with (
                LstmClient(f"127.0.0.1:{lb}") as client,
                grpc.insecure_channel(f"127.0.0.1:{lb}") as channel,
            ):
                stub = pb_grpc.LstmServiceStub(channel)  # no routing header
                for n in range(6):
                    x = rng.standard_normal((1, 10, 2)).astype(np.float32)
                    whole = client.predict("seed", x, output="sequence")
                    assert whole.sequence is not None
                    for step in range(10):
                        request = predict_request(
                            "seed",
                            x[:, step : step + 1],
                            output="sequence",
                            sequence_id=f"shared-{n}",
                            sequence_start=step == 0,
                            sequence_end=step == 9,
                        )
                        got = stub.Predict(request, timeout=10)
                        assert np.array_equal(
                            np.frombuffer(got.sequence.data, np.float32),
                            whole.sequence[0, step],
                        )
            after = [_predicts(m) for m in metrics]
            assert all(a - b >= 5 for a, b in zip(after, before, strict=True))  # both served
    finally:
        redis.stop()


def _predicts(metrics_port: int) -> float:
    return value(
        scrape(metrics_port),
        "lstm_requests_total",
        model="seed",
        version="1",
        rpc="Predict",
        code="OK",
    )
