"""End to end against a real in-process server: every RPC, outputs, errors, exact batching.

Over 250 lines: one shared server fixture and one table of bad requests, kept together.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lstm_serving.client.client import AsyncLstmClient, Prediction, predict_request
from lstm_serving.core.settings import Settings
from lstm_serving.proto.v1 import lstm_pb2 as pb
from lstm_serving.proto.v1 import lstm_pb2_grpc as pb_grpc
from lstm_serving.server.app import LstmServer
from tests.helpers import batches_run, start_server

RNG = np.random.default_rng(1234)


def _reference(path: Path, x: np.ndarray, lengths: list[int]) -> dict[str, np.ndarray]:
    """The model run directly in ONNX Runtime, no server in between."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input": x, "lengths": np.array(lengths, np.int32)}
    for k, units in enumerate([64, 32]):
        feeds[f"initial_h_{k}"] = feeds[f"initial_c_{k}"] = np.zeros((1, len(x), units), np.float32)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


async def test_list_and_describe(client: AsyncLstmClient) -> None:
    assert await client.list_models() == {"seed": [1]}
    d = await client.describe("seed")
    assert (d.name, d.version, list(d.loaded_versions)) == ("seed", 1, [1])
    assert (d.input_size, d.output_size, d.execution_provider) == (2, 32, "CPUExecutionProvider")
    assert [(la.units, la.input_size, list(la.output_shape)) for la in d.layers] == [
        (64, 2, [-1, -1, 64]),
        (32, 64, [-1, -1, 32]),
    ]
    assert [la.keras_parameters for la in d.layers] == [17152, 12416]
    assert [la.parameters for la in d.layers] == [17408, 12544]
    assert d.batching.max_batch_size == 32 and d.batching.max_queue_delay_ms == 5.0
    assert len(d.weights_sha256) == 64


async def test_outputs_match_onnx_runtime(client: AsyncLstmClient, seed_repository: Path) -> None:
    x = RNG.standard_normal((3, 12, 2)).astype(np.float32)
    lengths = [12, 5, 1]
    ref = _reference(seed_repository / "seed/1/model.onnx", x, lengths)
    p = await client.predict("seed", x, lengths=lengths, output="both", return_state=True)
    assert p.last_hidden is not None and p.sequence is not None
    np.testing.assert_array_equal(p.last_hidden, ref["last_hidden"])
    np.testing.assert_array_equal(p.sequence, ref["sequence"])
    assert not p.sequence[1, 5:].any() and not p.sequence[2, 1:].any()
    assert [h.shape for h, _ in p.states] == [(1, 3, 64), (1, 3, 32)]
    for k, (h, c) in enumerate(p.states):
        np.testing.assert_array_equal(h, ref[f"final_h_{k}"])
        np.testing.assert_array_equal(c, ref[f"final_c_{k}"])


async def test_output_modes_fill_only_what_was_asked(client: AsyncLstmClient) -> None:
    x = RNG.standard_normal((2, 4, 2)).astype(np.float32)
    default = await client.predict("seed", x)
    assert default.last_hidden is not None and default.sequence is None and not default.states
    seq = await client.predict("seed", x, output="sequence")
    assert seq.last_hidden is None and seq.sequence is not None and seq.sequence.shape == (2, 4, 32)
    # Keras: the final hidden state is the sequence's last step when every length is full.
    np.testing.assert_array_equal(seq.sequence[:, -1], default.last_hidden)
    unspecified = pb.PredictRequest(model="seed", input=pb.Tensor(shape=[1, 1, 2], values=[1, 2]))
    stub = pb_grpc.LstmServiceStub(client.channel)
    response = await stub.Predict(unspecified)
    assert response.HasField("last_hidden") and not response.HasField("sequence")
    assert list(response.last_hidden.shape) == [1, 32]


async def test_values_and_data_encodings_agree(client: AsyncLstmClient) -> None:
    x = RNG.standard_normal((1, 3, 2)).astype(np.float32)
    stub = pb_grpc.LstmServiceStub(client.channel)
    by_values = await stub.Predict(
        pb.PredictRequest(model="seed", input=pb.Tensor(shape=x.shape, values=x.ravel().tolist()))
    )
    by_data = await stub.Predict(predict_request("seed", x))
    assert by_values.last_hidden.data == by_data.last_hidden.data


async def test_version_zero_is_newest_and_unknown_version_is_not_found(
    client: AsyncLstmClient,
) -> None:
    x = np.zeros((1, 2, 2), np.float32)
    assert (await client.predict("seed", x, version=0)).version == 1
    assert (await client.predict("seed", x, version=1)).version == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.predict("seed", x, version=7)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no version 7" in str(err.value.details()) and "loaded versions: 1" in str(
        err.value.details()
    )


ERRORS = [
    ("unknown model", {"model": "nope"}, grpc.StatusCode.NOT_FOUND, "model 'nope' is not loaded"),
    ("no input", {"input": None}, grpc.StatusCode.INVALID_ARGUMENT, "input is not set"),
    ("rank 2", {"shape": [2, 3]}, grpc.StatusCode.INVALID_ARGUMENT, "rank 2"),
    ("features", {"shape": [1, 3, 5]}, grpc.StatusCode.INVALID_ARGUMENT, "this model takes 2"),
    ("empty batch", {"shape": [0, 3, 2]}, grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
    ("bytes", {"data": b"\0" * 7}, grpc.StatusCode.INVALID_ARGUMENT, "needs 24"),
    ("length 0", {"lengths": [0]}, grpc.StatusCode.INVALID_ARGUMENT, "lengths[0] is 0"),
    ("length > time", {"lengths": [4]}, grpc.StatusCode.INVALID_ARGUMENT, "in 1..3"),
    ("length count", {"lengths": [1, 2]}, grpc.StatusCode.INVALID_ARGUMENT, "2 entries"),
    ("nan", {"values": [float("nan")] + [0.0] * 5}, grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    ("inf", {"values": [0.0] * 5 + [float("inf")]}, grpc.StatusCode.INVALID_ARGUMENT, "NaN or Inf"),
    ("both", {"both": True}, grpc.StatusCode.INVALID_ARGUMENT, "not both"),
    ("too long", {"shape": [1, 5000, 2]}, grpc.StatusCode.INVALID_ARGUMENT, "limit is 2048"),
    ("too many", {"shape": [2000, 1, 2]}, grpc.StatusCode.INVALID_ARGUMENT, "per request"),
    ("huge dims", {"shape": [1, 2**40, 2]}, grpc.StatusCode.INVALID_ARGUMENT, "limit is 2048"),
    ("negative", {"shape": [1, -3, 2]}, grpc.StatusCode.INVALID_ARGUMENT, "negative"),
    ("bad output", {"output": 9}, grpc.StatusCode.INVALID_ARGUMENT, "not a known Output"),
]


@pytest.mark.parametrize(("case", "change", "code", "message"), ERRORS, ids=[e[0] for e in ERRORS])
async def test_bad_requests_get_precise_status(
    client: AsyncLstmClient,
    case: str,
    change: dict[str, object],
    code: grpc.StatusCode,
    message: str,
) -> None:
    request = pb.PredictRequest(
        model=str(change.get("model", "seed")),
        input=pb.Tensor(
            shape=change.get("shape", [1, 3, 2]),  # type: ignore[arg-type]
            data=np.zeros(6, "<f4").tobytes(),
        ),
        lengths=change.get("lengths", []),  # type: ignore[arg-type]
        output=change.get("output", 0),  # type: ignore[arg-type]
    )
    if "data" in change:
        request.input.data = change["data"]  # type: ignore[assignment]
    if "values" in change:
        request.input.ClearField("data")
        request.input.values.extend(change["values"])  # type: ignore[arg-type]
    if "both" in change:
        request.input.values.extend([0.0] * 6)
    if "input" in change:
        request.ClearField("input")
    stub = pb_grpc.LstmServiceStub(client.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Predict(request)
    assert err.value.code() == code, err.value.details()
    assert message in str(err.value.details())
    ok = await client.predict("seed", np.ones((1, 3, 2), np.float32))  # still serving
    assert ok.last_hidden is not None and ok.last_hidden.shape == (1, 32)


def _random_request() -> dict[str, object]:
    batch, steps = int(RNG.integers(1, 9)), int(RNG.integers(1, 51))
    return {
        "inputs": RNG.standard_normal((batch, steps, 2)).astype(np.float32),
        "lengths": RNG.integers(1, steps + 1, size=batch).tolist() if RNG.random() < 0.7 else None,
        "output": str(RNG.choice(["last_hidden", "sequence", "both"])),
        "return_state": bool(RNG.random() < 0.3),
    }


def _same(a: Prediction, b: Prediction) -> bool:
    def raw(v: np.ndarray | None) -> bytes | None:
        return None if v is None else v.tobytes() + str(v.shape).encode()

    return (
        raw(a.last_hidden) == raw(b.last_hidden)
        and raw(a.sequence) == raw(b.sequence)
        and [(raw(h), raw(c)) for h, c in a.states] == [(raw(h), raw(c)) for h, c in b.states]
    )


async def test_batching_never_changes_an_answer(
    client: AsyncLstmClient, server: LstmServer
) -> None:
    """200 concurrent mixed requests equal, bit for bit, the same requests sent one by one."""
    requests = [_random_request() for _ in range(200)]
    alone = [await client.predict("seed", **r) for r in requests]  # type: ignore[arg-type]
    batches_before = await batches_run(server)
    together = await asyncio.gather(
        *(client.predict("seed", **r) for r in requests)  # type: ignore[arg-type]
    )
    batches = await batches_run(server) - batches_before
    assert batches < len(requests) / 2, f"{batches} runs for 200 requests: no batching happened"
    wrong = [i for i, (a, b) in enumerate(zip(alone, together, strict=True)) if not _same(a, b)]
    assert not wrong, f"requests {wrong[:10]} differ when batched"
    for r, p in zip(requests, together, strict=True):  # and each got its own shape back
        x = r["inputs"]
        assert isinstance(x, np.ndarray)
        if p.sequence is not None:
            assert p.sequence.shape == (x.shape[0], x.shape[1], 32)
        if p.last_hidden is not None:
            assert p.last_hidden.shape == (x.shape[0], 32)


async def test_reflection_lists_services(client: AsyncLstmClient) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)  # type: ignore[arg-type]
    responses = stub.ServerReflectionInfo(  # type: ignore[operator]
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    async for response in responses:
        names = {s.name for s in response.list_services_response.service}
        assert {"lstm.v1.LstmService", "grpc.health.v1.Health"} <= names
        break


async def test_health_transitions(seed_repository: Path) -> None:
    server = LstmServer(
        Settings(repository=seed_repository, host="127.0.0.1", port=0, metrics_port=0, device="cpu")
    )
    await server.start()  # listening, models not loaded yet
    async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
        assert await client.health() == "NOT_SERVING"
        assert await client.health("lstm.v1.LstmService") == "NOT_SERVING"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.predict("seed", np.zeros((1, 1, 2), np.float32))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        await server.load()
        assert await client.health() == "SERVING"
        assert await client.health("lstm.v1.LstmService") == "SERVING"
        await server.health.enter_graceful_shutdown()
        assert await client.health() == "NOT_SERVING"
    await server.stop(grace=0.5)


async def test_stop_finishes_in_flight_requests(seed_repository: Path) -> None:
    server = await start_server(repository=seed_repository, max_queue_delay_ms=200.0)
    async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
        pending = asyncio.ensure_future(client.predict("seed", np.ones((1, 4, 2), np.float32)))
        await asyncio.sleep(0.05)  # queued, waiting out the 200 ms batching delay
        await server.stop(grace=5)
        result = await pending
        assert result.last_hidden is not None


async def test_full_queue_and_expired_deadlines_end_to_end(seed_repository: Path) -> None:
    """A tiny queue answers RESOURCE_EXHAUSTED at once; a deadline inside the batching delay
    is DEADLINE_EXCEEDED and never computed; the server then answers normally."""
    server = await start_server(
        repository=seed_repository, max_queue_size=2, max_queue_delay_ms=300.0
    )
    x = np.ones((1, 3, 2), np.float32)
    async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
        results = await asyncio.gather(
            *(client.predict("seed", x) for _ in range(6)), return_exceptions=True
        )
        codes = sorted(
            r.code().name if isinstance(r, grpc.aio.AioRpcError) else "OK" for r in results
        )
        assert codes == ["OK", "OK"] + ["RESOURCE_EXHAUSTED"] * 4
        exhausted = next(r for r in results if isinstance(r, grpc.aio.AioRpcError))
        assert "--max-queue-size" in str(exhausted.details())
        batches = await batches_run(server)
        hurried = AsyncLstmClient(f"127.0.0.1:{server.port}", timeout=0.05)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await hurried.predict("seed", x)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await hurried.close()
        await asyncio.sleep(0.4)  # past the batching delay: the expired request was dropped
        assert await batches_run(server) == batches
        assert (await client.predict("seed", x)).last_hidden is not None
    await server.stop(grace=1)
