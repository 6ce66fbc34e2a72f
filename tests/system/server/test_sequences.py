"""State across calls, end to end on a real server: client-held continuation (both protocols),
server-held sequences (unary and streaming, interleaved and batched), and every error.

Every answer is compared with the whole sequence run alone, without state, by the same server.
Over 250 lines: the models and the server fixture serve every case.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import torch
from prometheus_client import generate_latest

from lstm_export import StackedLSTM, build_model
from lstm_serving.client.client import AsyncLstmClient, Prediction
from lstm_serving.client.messages import predict_request, prediction
from lstm_serving.core.requests import SequenceStep
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from lstm_serving.proto.v1 import lstm_pb2 as pb
from lstm_serving.proto.v1 import lstm_pb2_grpc as pb_grpc
from lstm_serving.protocols.kserve_v2 import build_infer_request, decode_infer_response
from lstm_serving.server.app import LstmServer
from tests.helpers import parse, start_server, value

# name: (input size, layer widths, bidirectional)
MODELS = {"uni": (3, [5, 3], False), "stack3": (2, [8, 4, 6], False), "bi": (2, [4, 3], True)}
CONTINUATION_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for seed, (name, (features, layers, bidirectional)) in enumerate(MODELS.items()):
        torch.manual_seed(seed)
        module = StackedLSTM(features, layers, bidirectional=bidirectional).eval()
        (root / name / "1").mkdir(parents=True)
        onnx.save(build_model(module), str(root / name / "1" / "model.onnx"))
    return root


@pytest.fixture(scope="module")
async def server(repository: Path) -> AsyncIterator[LstmServer]:
    """This module's server (conftest's `client` calls it)."""
    served = await start_server(
        repository=repository, max_queue_delay_ms=2.0, max_sequences=100, sequence_idle_timeout=30
    )
    yield served
    await served.stop(grace=1)


def chunking(rng: np.random.Generator, steps: int) -> list[tuple[int, int]]:
    """Random [start, end) chunks covering 0..steps, sizes 1 to 12."""
    bounds, at = [], 0
    while at < steps:
        size = int(rng.integers(1, 13))
        bounds.append((at, min(steps, at + size)))
        at += size
    return bounds


async def whole(client: AsyncLstmClient, model: str, x: np.ndarray) -> Prediction:
    return await client.predict(model, x, output="both", return_state=True)


def assert_chunk(got: Prediction, expected: Prediction, a: int, b: int) -> float:
    """A chunk's answer against the whole run's steps a..b; the largest difference."""
    assert got.sequence is not None and expected.sequence is not None
    assert got.last_hidden is not None
    diffs = [
        np.abs(got.sequence - expected.sequence[:, a:b]).max(),
        np.abs(got.last_hidden - expected.sequence[:, b - 1]).max(),
    ]
    assert max(diffs) <= CONTINUATION_TOLERANCE, (a, b, diffs)
    return float(max(diffs))


@pytest.mark.parametrize("model", ["uni", "stack3"])
async def test_client_held_chunks_equal_the_whole_sequence(
    client: AsyncLstmClient, model: str
) -> None:
    """16 sequences at once, each in random chunks, each chunk from the previous one's states;
    they share batches with each other and with stateless requests."""
    rng = np.random.default_rng(len(model))
    features = MODELS[model][0]

    async def one(i: int) -> float:
        x = rng.standard_normal((1, int(rng.integers(5, 50)), features)).astype(np.float32)
        expected = await whole(client, model, x)
        states, worst = None, 0.0
        for a, b in chunking(rng, x.shape[1]):
            got = await client.predict(
                model, x[:, a:b], output="both", return_state=True, initial_state=states
            )
            worst = max(worst, assert_chunk(got, expected, a, b))
            states = got.states
        assert states is not None
        for (h, c), (wh, wc) in zip(states, expected.states, strict=True):
            assert np.abs(h - wh).max() <= CONTINUATION_TOLERANCE
            assert np.abs(c - wc).max() <= CONTINUATION_TOLERANCE
        return worst

    worst = await asyncio.gather(*(one(i) for i in range(16)))
    assert max(worst) <= CONTINUATION_TOLERANCE
    # docs/sequences.md: chunks equal the whole run "bit for bit" on the CPU; this says so
    assert max(worst) == 0.0


async def test_client_held_state_over_kserve_v2(
    server: LstmServer, client: AsyncLstmClient
) -> None:
    stub = v2_grpc.GRPCInferenceServiceStub(client.channel)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 30, 2)).astype(np.float32)
    expected = await whole(client, "stack3", x)
    states: dict[str, np.ndarray] = {}
    for a, b in chunking(rng, 30):
        names = ["sequence"] + [f"final_{s}_{k}" for k in range(3) for s in "hc"]
        request = build_infer_request("stack3", x[:, a:b], outputs=names, initial_states=states)
        response = await stub.ModelInfer(request)
        out = decode_infer_response(response)
        assert expected.sequence is not None
        assert np.abs(out["sequence"] - expected.sequence[:, a:b]).max() <= 1e-6
        states = {f"initial_{s}_{k}": out[f"final_{s}_{k}"] for k in range(3) for s in "hc"}


async def test_server_held_sequences_interleaved_unary_and_streaming(
    client: AsyncLstmClient,
) -> None:
    """64 sequences at once, random lengths and chunk sizes, half stepped by unary Predict and
    half over PredictStream: every step equals the whole sequence run alone."""
    rng = np.random.default_rng(11)

    async def one(i: int) -> int:
        model = ("uni", "stack3")[i % 2]
        x = rng.standard_normal((1, int(rng.integers(3, 40)), MODELS[model][0])).astype(np.float32)
        expected = await whole(client, model, x)
        chunks = chunking(rng, x.shape[1])
        if i % 4 < 2:
            for n, (a, b) in enumerate(chunks):
                got = await client.predict(
                    model,
                    x[:, a:b],
                    output="both",
                    sequence_id=f"s{i}" if i % 8 else 1000 + i,
                    sequence_start=n == 0,
                    sequence_end=n == len(chunks) - 1,
                )
                assert_chunk(got, expected, a, b)
        else:
            async with client.sequence(model, 2000 + i) as sequence:
                for n, (a, b) in enumerate(chunks):
                    got = await sequence.step(x[0, a:b], end=n == len(chunks) - 1, output="both")
                    assert_chunk(got, expected, a, b)
        return len(chunks)

    steps = await asyncio.gather(*(one(i) for i in range(64)))
    assert sum(steps) > 64 * 2


async def test_steps_pipelined_on_one_v2_stream_run_in_order(client: AsyncLstmClient) -> None:
    """ModelStreamInfer starts every message as it arrives; steps of one sequence still run
    one at a time, in order (never two in one batch), while two sequences interleave."""
    stub = v2_grpc.GRPCInferenceServiceStub(client.channel)
    rng = np.random.default_rng(5)
    xs = {sid: rng.standard_normal((1, 24, 3)).astype(np.float32) for sid in (71, 72)}
    expected = {sid: await whole(client, "uni", x) for sid, x in xs.items()}
    requests = []
    for n in range(12):  # 2-step chunks, the two sequences alternating
        for sid, x in xs.items():
            step = SequenceStep(sid, start=n == 0, end=n == 11)
            chunk = x[:, 2 * n : 2 * n + 2]
            request = build_infer_request(
                "uni", chunk, outputs=["sequence"], request_id=f"{sid}:{n}", sequence=step
            )
            requests.append(request)
    answers = [message async for message in stub.ModelStreamInfer(iter(requests))]
    assert [a.infer_response.id for a in answers] == [r.id for r in requests]
    for answer in answers:
        assert not answer.error_message, answer.error_message
        sid, n = (int(v) for v in answer.infer_response.id.split(":"))
        got = decode_infer_response(answer.infer_response)["sequence"]
        want = expected[sid].sequence
        assert want is not None and np.abs(got - want[:, 2 * n : 2 * n + 2]).max() <= 1e-6


def batch_runs(server: LstmServer, model: str) -> float:
    """How many batches `model` has run on this server."""
    samples = parse(generate_latest(server.metrics.registry).decode())
    return value(samples, "lstm_batch_size_count", model=model)


async def test_predict_stream_reads_ahead_and_a_failure_stops_every_later_step(
    client: AsyncLstmClient, server: LstmServer
) -> None:
    """PredictStream queues each message as it arrives, so one stream's messages share
    batches, each answer still bit for bit its own input's alone, in order. A message that
    fails ends the stream: a step of a server-held sequence sent after it never runs (the
    sequence then continues from its first step only)."""
    stub = pb_grpc.LstmServiceStub(client.channel)
    xs = np.random.default_rng(8).standard_normal((32, 1, 6, 3)).astype(np.float32)
    before = batch_runs(server, "uni")
    answers = [a async for a in stub.PredictStream(iter(predict_request("uni", x) for x in xs))]
    runs = batch_runs(server, "uni") - before
    assert runs <= 16, runs  # one message at a time took 32 runs
    for x, answer in zip(xs, answers, strict=True):
        alone = await client.predict("uni", x)
        np.testing.assert_array_equal(prediction(answer).last_hidden, alone.last_hidden)

    x = xs[0, :, :4]
    stream = stub.PredictStream(
        iter(
            [
                predict_request(
                    "uni", x[:, :2], sequence_id="after-a-failure", sequence_start=True
                ),
                predict_request("uni", np.ones((1, 2, 9), np.float32)),  # 9 features: refused
                predict_request("uni", 100 * x[:, 2:], sequence_id="after-a-failure"),
            ]
        )
    )
    first = await stream.read()  # the step before the failure is answered
    assert isinstance(first, pb.PredictResponse)
    got = prediction(first).last_hidden
    unheld = (await client.predict("uni", x[:, :2])).last_hidden
    assert got is not None and unheld is not None
    assert np.abs(got - unheld).max() <= CONTINUATION_TOLERANCE
    code, details = await status_of(_drained(stream))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "9 features" in details, details
    rest = await client.predict(
        "uni", x[:, 2:], output="both", sequence_id="after-a-failure", sequence_end=True
    )
    assert_chunk(rest, await whole(client, "uni", x), 2, 4)


async def _drained(
    stream: grpc.aio.StreamStreamCall[pb.PredictRequest, pb.PredictResponse],
) -> None:
    while await stream.read() is not grpc.aio.EOF:
        pass


async def test_a_checkpoint_moves_a_sequence(client: AsyncLstmClient) -> None:
    """START with initial_state continues from a returned state: how a sequence moves."""
    x = np.random.default_rng(2).standard_normal((1, 20, 3)).astype(np.float32)
    expected = await whole(client, "uni", x)
    first = await client.predict(
        "uni", x[:, :8], sequence_id="cp-a", sequence_start=True, return_state=True
    )
    moved = await client.predict(
        "uni",
        x[:, 8:],
        output="both",
        sequence_id="cp-b",
        sequence_start=True,
        sequence_end=True,
        initial_state=first.states,
    )
    assert_chunk(moved, expected, 8, 20)


async def status_of(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), str(err.value.details())


async def test_every_sequence_error_says_what_happened(repository: Path) -> None:
    server = await start_server(repository=repository, max_sequences=2, sequence_idle_timeout=0.3)
    x = np.zeros((1, 2, 3), np.float32)
    try:
        async with AsyncLstmClient(f"127.0.0.1:{server.port}") as c:

            def step(
                sid: int | str, start: bool = False, end: bool = False
            ) -> Awaitable[Prediction]:
                return c.predict("uni", x, sequence_id=sid, sequence_start=start, sequence_end=end)

            code, message = await status_of(step(1))
            assert code == grpc.StatusCode.NOT_FOUND and "was never started" in message
            await step(1, start=True)
            code, message = await status_of(step(1, start=True))
            assert code == grpc.StatusCode.ALREADY_EXISTS and "a START never resets" in message
            await step(1, end=True)
            code, message = await status_of(step(1))
            assert code == grpc.StatusCode.NOT_FOUND and "was ended" in message
            await step("a", start=True)
            await step("b", start=True)
            code, message = await status_of(step("c", start=True))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-sequences" in message
            await asyncio.sleep(1.0)  # idle past --sequence-idle-timeout 0.3
            code, message = await status_of(step("a"))
            assert code == grpc.StatusCode.NOT_FOUND
            assert "expired after" in message and "--sequence-idle-timeout 0.3" in message
            await step("c", start=True)  # expiry freed room
            wide = np.zeros((2, 2, 3), np.float32)
            code, message = await status_of(c.predict("uni", wide, sequence_id="c"))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "holds one sequence" in message
            code, message = await status_of(
                c.predict("bi", np.zeros((1, 2, 2), np.float32), sequence_id=5, sequence_start=True)
            )
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "bidirectional" in message
            states = [(np.zeros((1, 1, 5), np.float32), np.zeros((1, 1, 5), np.float32))] * 2
            code, message = await status_of(
                c.predict("uni", x, sequence_id="c", initial_state=states)
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "initial state" in message
            code, message = await status_of(c.predict("uni", x, initial_state=states[:1]))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "missing initial_h_1" in message
            assert (await c.predict("uni", x, sequence_id="c")).last_hidden is not None
    finally:
        await server.stop(grace=1)
    samples = server.metrics.registry
    closed = {
        s.labels["reason"]: s.value
        for m in samples.collect()
        if m.name == "lstm_sequences_closed"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert closed["ended"] == 1 and closed["expired"] >= 2
