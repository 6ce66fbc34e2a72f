"""Prometheus metrics, parsed back from real expositions: in process, over HTTP, 2 workers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import generate_latest

from lstm_serving.client.client import AsyncLstmClient, LstmClient
from lstm_serving.client.messages import predict_request
from lstm_serving.core.requests import SequenceStep
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from lstm_serving.proto.v1 import lstm_pb2_grpc as pb_grpc
from lstm_serving.protocols.kserve_v2 import build_infer_request
from tests.helpers import (
    free_port,
    parse,
    scrape,
    start,
    start_server,
    stop,
    value,
    wait_serving,
    worker_pids,
)

OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)  # a channel opens its own connection


async def test_counts_labels_and_sums_after_known_requests(seed_repository: Path) -> None:
    server = await start_server(repository=seed_repository)
    lengths_sent: list[int] = []
    async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
        for i in range(5):
            lengths = [4, 1 + i % 4]
            lengths_sent += lengths
            await client.predict("seed", np.ones((2, 4, 2), np.float32), lengths=lengths)
        for bad in ([9, 9], [0, 1]):
            with pytest.raises(grpc.aio.AioRpcError):
                await client.predict("seed", np.ones((2, 4, 2), np.float32), lengths=bad)
        with pytest.raises(grpc.aio.AioRpcError):
            await client.predict("no-such-model", np.ones((1, 1, 2), np.float32))
        stub = v2_grpc.GRPCInferenceServiceStub(client.channel)
        for _ in range(3):
            await stub.ModelInfer(build_infer_request("seed", np.zeros((1, 6, 2), np.float32)))
            lengths_sent.append(6)
        # steps of a sequence never started: each fails in its turn on a stream, after the
        # request itself is let go, and still counts under its model
        zeros = np.zeros((1, 2, 2), np.float32)
        v2_step = build_infer_request("seed", zeros, sequence=SequenceStep("never-started"))
        (answer,) = [a async for a in stub.ModelStreamInfer(iter([v2_step]))]
        assert answer.error_message.startswith("NOT_FOUND"), answer.error_message
        v1_step = predict_request("seed", zeros, sequence_id="never-started")
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for _ in pb_grpc.LstmServiceStub(client.channel).PredictStream(iter([v1_step])):
                pass
        assert ended.value.code() == grpc.StatusCode.NOT_FOUND
        await client.list_models()
    samples = parse(generate_latest(server.metrics.registry).decode())
    await server.stop(grace=1)

    requests = "lstm_requests_total"
    assert value(samples, requests, model="seed", version="1", rpc="Predict", code="OK") == 5
    assert (
        value(samples, requests, model="seed", version="", rpc="Predict", code="INVALID_ARGUMENT")
        == 2
    )
    assert (
        value(samples, requests, model="_unknown", version="", rpc="Predict", code="NOT_FOUND") == 1
    )
    assert value(samples, requests, model="seed", version="1", rpc="ModelInfer", code="OK") == 3
    for stream in ("ModelStreamInfer", "PredictStream"):
        assert value(samples, requests, model="seed", version="", rpc=stream, code="NOT_FOUND") == 1
    assert value(samples, requests, model="", version="", rpc="ListModels", code="OK") == 1
    duration = "lstm_request_duration_seconds"
    assert value(samples, duration + "_count", model="seed", rpc="Predict") == 7
    assert 0 < value(samples, duration + "_sum", model="seed", rpc="Predict") < 7
    assert value(samples, duration + "_bucket", model="seed", rpc="Predict", le="5e-05") <= 7
    assert value(samples, "lstm_sequence_length_count", model="seed") == 8  # per request
    assert value(samples, "lstm_sequence_length_sum", model="seed") == 5 * 4 + 3 * 6
    assert value(samples, "lstm_batch_size_sum", model="seed") == len(lengths_sent)
    assert value(samples, "lstm_batch_size_count", model="seed") == 8  # one run a request
    assert value(samples, "lstm_queue_duration_seconds_count", model="seed") == 8
    assert (
        value(
            samples,
            "lstm_inference_duration_seconds_count",
            model="seed",
            provider="CPUExecutionProvider",
        )
        == 8
    )
    assert value(samples, "lstm_batch_padding_ratio_count", model="seed") == 8
    # lengths (4, 1) pad to 4 x 2 = 8 steps of which 5 are real: 3/8 wasted, and so on.
    expected_padding = sum(1 - (4 + 1 + i % 4) / 8 for i in range(5))
    assert value(samples, "lstm_batch_padding_ratio_sum", model="seed") == pytest.approx(
        expected_padding
    )
    assert value(samples, "lstm_queue_depth", model="seed") == 0
    assert (
        value(
            samples, "lstm_model_info", model="seed", version="1", provider="CPUExecutionProvider"
        )
        == 1
    )


def test_http_scrape_of_a_server_process(seed_repository: Path) -> None:
    port, metrics_port = free_port(), free_port()
    process = start(seed_repository, port, "--metrics-port", str(metrics_port))
    try:
        wait_serving(process, port)
        with LstmClient(f"127.0.0.1:{port}") as client:
            for _ in range(4):
                client.predict("seed", np.ones((3, 5, 2), np.float32))
        samples = scrape(metrics_port)
    finally:
        assert stop(process)[0] == 0
    assert (
        value(samples, "lstm_requests_total", model="seed", version="1", rpc="Predict", code="OK")
        == 4
    )
    assert value(samples, "lstm_batch_size_sum", model="seed") == 12
    assert (
        value(
            samples, "lstm_model_info", model="seed", version="1", provider="CPUExecutionProvider"
        )
        == 1
    )


def test_two_workers_sum_in_one_scrape_and_dead_ones_are_marked(
    seed_repository: Path, tmp_path: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    process = start(
        seed_repository,
        port,
        "--workers",
        "2",
        "--metrics-port",
        str(metrics_port),
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")},
    )
    try:
        wait_serving(process, port)  # the first worker: the other may still be starting
        request = predict_request("seed", np.ones((1, 3, 2), np.float32))
        calls, deadline = 0, time.monotonic() + 30
        while calls < 20 or len(list((tmp_path / "prom").glob("counter_*.db"))) < 2:
            assert time.monotonic() < deadline, "one worker never served a call"
            # A connection of its own each time (channels share them by default), so the
            # kernel spreads the calls over the workers.
            with grpc.insecure_channel(f"127.0.0.1:{port}", [OWN_CONNECTION]) as channel:
                pb_grpc.LstmServiceStub(channel).Predict(request, timeout=10)
            calls += 1
        samples = scrape(metrics_port)
        assert (
            value(
                samples, "lstm_requests_total", model="seed", version="1", rpc="Predict", code="OK"
            )
            == calls
        )
        assert value(samples, "lstm_batch_size_sum", model="seed") == calls
        assert len(list((tmp_path / "prom").glob("counter_*.db"))) == 2  # both workers served
        workers = worker_pids(process)
        assert len(workers) == 2
        live_files = {f.name for f in (tmp_path / "prom").glob("gauge_live*.db")}
        assert any(workers[0] in name for name in live_files)
        os.kill(int(workers[0]), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(workers[0] in f.name for f in (tmp_path / "prom").glob("gauge_live*.db")):
            assert time.monotonic() < deadline, "the dead worker's live gauges stayed"
            time.sleep(0.1)
        after = scrape(metrics_port)
        assert (
            value(after, "lstm_requests_total", model="seed", version="1", rpc="Predict", code="OK")
            == 20
        )  # counters of the dead worker are kept
        with LstmClient(f"127.0.0.1:{port}") as client:  # the other worker serves on
            client.predict("seed", np.ones((1, 3, 2), np.float32))
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert "exited with code -9" in err
