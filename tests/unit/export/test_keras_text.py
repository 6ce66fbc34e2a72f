"""Text models end to end: Keras models with an Embedding (mask_zero) exported, served over
lstm.v1 and KServe v2 with token ids, and compared with Keras's own `model.predict`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import keras  # type: ignore[import-untyped]  # on torch: tests/unit/export/conftest.py
import numpy as np
import pytest

from lstm_export.cli import main as export_main
from lstm_serving.client.client import AsyncLstmClient
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from lstm_serving.protocols.kserve_v2 import build_infer_request, decode_infer_response
from lstm_serving.server.app import LstmServer
from tests.helpers import SEED_REPOSITORY, start_server
from tests.helpers import client as client_process

L = keras.layers
TOLERANCE = 1e-5
VOCABULARY = 50


def imdb_like() -> Any:
    """keras.io's IMDB classifier, smaller: Embedding(mask_zero), two bidirectional LSTMs."""
    inputs = keras.Input((None,), dtype="int64")
    x = L.Embedding(VOCABULARY, 8, mask_zero=True)(inputs)
    x = L.Bidirectional(L.LSTM(6, return_sequences=True))(x)
    x = L.Bidirectional(L.LSTM(5))(x)
    return keras.Model(inputs, L.Dense(1, activation="sigmoid")(x))


def tagger() -> Any:
    """A tagger: a label per token."""
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int64"),
            L.Embedding(VOCABULARY, 6, mask_zero=True),
            L.LSTM(7, return_sequences=True),
            L.Dense(4, activation="softmax"),
        ]
    )


MODELS = {"imdb": imdb_like, "tagger": tagger}


def token_ids() -> np.ndarray:
    """Padded before (keras.utils.pad_sequences's default), after, not at all."""
    ids = np.random.default_rng(3).integers(1, VOCABULARY, size=(4, 9))
    ids[0, :4] = 0
    ids[1, 6:] = 0
    ids[2, :2] = 0
    ids[2, 8:] = 0
    return ids.astype(np.int64)


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    keras.utils.set_random_seed(1)
    return {name: build() for name, build in MODELS.items()}


@pytest.fixture(scope="module")
async def server(
    keras_models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LstmServer]:
    root = tmp_path_factory.mktemp("text")
    for name, model in keras_models.items():
        for suffix in ("keras", "h5"):
            model.save(root / f"{name}.{suffix}")
            args = ["--keras", str(root / f"{name}.{suffix}"), "--name", f"{name}-{suffix}"]
            assert export_main([*args, "--repository", str(root / "models")]) == 0
    served = await start_server(repository=root / "models", max_queue_delay_ms=5.0)
    yield served
    await served.stop(grace=1)


@pytest.mark.parametrize("suffix", ["keras", "h5"])
@pytest.mark.parametrize("name", list(MODELS))
async def test_token_ids_answer_as_model_predict_over_both_protocols(
    keras_models: dict[str, Any], client: AsyncLstmClient, name: str, suffix: str
) -> None:
    ids = token_ids()
    expected = np.asarray(keras_models[name].predict(ids, verbose=0))
    answer = await client.predict(f"{name}-{suffix}", ids)
    assert answer.prediction is not None
    assert np.abs(answer.prediction - expected).max() <= TOLERANCE
    stub = v2_grpc.GRPCInferenceServiceStub(client.channel)
    for dtype in ("INT64", "INT32"):
        request = build_infer_request(f"{name}-{suffix}", ids, outputs=["prediction"])
        if dtype == "INT32":
            request.inputs[0].datatype = "INT32"
            request.raw_input_contents[0] = ids.astype("<i4").tobytes()
        got = decode_infer_response(await stub.ModelInfer(request))["prediction"]
        assert np.abs(got - expected).max() <= TOLERANCE, dtype


async def test_rows_batched_together_equal_each_alone_bit_for_bit(client: AsyncLstmClient) -> None:
    ids = token_ids()
    alone = [await client.predict("tagger-keras", ids[row : row + 1]) for row in range(4)]
    together = await asyncio.gather(
        *(client.predict("tagger-keras", ids[row : row + 1]) for row in range(4))
    )
    for one, many in zip(alone, together, strict=True):
        assert one.prediction is not None and many.prediction is not None
        np.testing.assert_array_equal(one.prediction, many.prediction)


async def test_a_token_sequence_in_chunks_equals_the_whole_run(client: AsyncLstmClient) -> None:
    """Server-held and client-held state, token chunks of a sequence with no padding."""
    ids = np.random.default_rng(4).integers(1, VOCABULARY, size=(1, 12)).astype(np.int64)
    whole = await client.predict("tagger-keras", ids, output="both")
    first = await client.predict(
        "tagger-keras", ids[:, :5], output="both", sequence_id=77, sequence_start=True
    )
    rest = await client.predict(
        "tagger-keras", ids[:, 5:], output="both", sequence_id=77, sequence_end=True
    )
    assert whole.last_hidden is not None and rest.last_hidden is not None
    assert np.abs(rest.last_hidden - whole.last_hidden).max() <= 1e-6
    assert first.sequence is not None and rest.sequence is not None and whole.sequence is not None
    chunks = np.concatenate([first.sequence, rest.sequence], axis=1)
    assert np.abs(chunks - whole.sequence).max() <= 1e-6
    held = await client.predict("tagger-keras", ids[:, :5], output="both", return_state=True)
    carried = await client.predict(
        "tagger-keras", ids[:, 5:], output="both", initial_state=held.states
    )
    assert carried.last_hidden is not None
    assert np.abs(carried.last_hidden - whole.last_hidden).max() <= 1e-6


@pytest.mark.parametrize(
    ("model", "inputs", "message"),
    [
        ("tagger-keras", np.array([[3, 50, 2]]), "input[0] step 1 is token id 50, outside"),
        ("tagger-keras", np.array([[-1, 4]]), "input[0] step 0 is token id -1"),
        ("tagger-keras", np.ones((1, 3, 6), np.float32), "this model takes token ids"),
        ("tagger-keras", np.array([[0, 0, 0]]), "masked at every step"),
        ("tagger-keras", np.ones((2, 3, 4), np.int64), "this model takes token ids [batch, time]"),
    ],
    ids=["too-large", "negative", "floats", "all-padding", "rank-3"],
)
async def test_refusals_say_which_input_the_model_takes(
    client: AsyncLstmClient, model: str, inputs: np.ndarray, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.predict(model, inputs)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(err.value.details())


async def test_tokens_to_a_float_model_are_refused() -> None:
    served = await start_server(repository=SEED_REPOSITORY)
    try:
        async with AsyncLstmClient(f"127.0.0.1:{served.port}") as client:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.predict("seed", np.array([[1, 2, 3]]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "this model takes float32 features [batch, time, 2]" in str(err.value.details())
    finally:
        await served.stop(grace=1)


async def test_the_cli_sends_token_ids(
    keras_models: dict[str, Any], server: LstmServer, tmp_path: Path
) -> None:
    """`lstm-client predict --tokens` and an integer .npy, as a user types them."""
    ids = token_ids()
    np.save(tmp_path / "ids.npy", ids)
    expected = np.asarray(keras_models["tagger"].predict(ids, verbose=0))
    for source in (
        ["--tokens", ",".join(map(str, ids[2]))],
        ["--input", str(tmp_path / "ids.npy")],
    ):
        run = await asyncio.to_thread(
            client_process, server.port, "--json", "predict", "tagger-keras", *source
        )
        assert run.returncode == 0, run.stderr
        got = np.array(json.loads(run.stdout)["prediction"])
        rows = expected[2:3] if source[0] == "--tokens" else expected
        assert np.abs(got - rows).max() <= TOLERANCE


async def test_the_load_generator_sends_token_ids_to_a_text_model(server: LstmServer) -> None:
    """`lstm-client load` asks the model, sees its embedding and sends random ids: no errors."""
    run = await asyncio.to_thread(
        client_process,
        server.port,
        "--json",
        "load",
        "imdb-keras",
        "--concurrency",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--protocol",
        "v2-stream",  # ModelStreamInfer, requests pipelined: token ids on the v2 stream
    )
    assert run.returncode == 0, run.stderr
    (level,) = json.loads(run.stdout)["levels"]
    assert level["requests"] > 0 and level["errors"] == {}


async def test_token_chunks_on_a_predict_stream_equal_the_whole_run(
    client: AsyncLstmClient,
) -> None:
    """The sequence handle (one PredictStream) takes token chunks as it takes features."""
    ids = np.random.default_rng(5).integers(1, VOCABULARY, size=12).astype(np.int64)
    whole = await client.predict("tagger-keras", ids[None], output="both")
    async with client.sequence("tagger-keras", "stream-1") as sequence:
        await sequence.step(ids[:7], output="both")
        last = await sequence.step(ids[7:], output="both", end=True)
    assert last.last_hidden is not None and whole.last_hidden is not None
    assert np.abs(last.last_hidden - whole.last_hidden).max() <= 1e-6
