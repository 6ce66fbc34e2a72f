"""Keras models (real Keras 3 on the torch backend, no TensorFlow) saved as .keras and .h5,
imported by lstm-export, served, and answered as `model.predict` answers (within 1e-5).

Over 250 lines: the models, their exports and the server fixture serve every case.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import h5py  # type: ignore[import-untyped]
import keras  # type: ignore[import-untyped]  # on torch: tests/unit/export/conftest.py
import numpy as np
import onnxruntime as ort
import pytest

from lstm_export.cli import main as export_main
from lstm_serving.client.client import AsyncLstmClient
from lstm_serving.server.app import LstmServer
from tests.helpers import export, start_server

L = keras.layers
TOLERANCE = 1e-5


def _functional(body: Callable[[Any], Any], features: int) -> Any:
    """A Functional model, keras.Model(inputs, outputs), as keras.io's examples write it."""
    inputs = keras.Input((None, features))
    return keras.Model(inputs, body(inputs))


def seed() -> Any:  # the classic example, exactly as users write it
    return keras.Sequential([L.LSTM(64, return_sequences=True, input_shape=(10, 2)), L.LSTM(32)])


MODELS: dict[str, Callable[[], Any]] = {
    "seed": seed,
    "stack3": lambda: keras.Sequential(
        [
            keras.Input((None, 3)),
            L.LSTM(16, return_sequences=True),
            L.Dropout(0.3),
            L.LSTM(8, return_sequences=True),
            L.LSTM(12),
            L.Dense(3, activation="softmax"),
        ]
    ),
    "bidirectional": lambda: keras.Sequential(
        [
            keras.Input((None, 2)),
            L.Bidirectional(L.LSTM(6, return_sequences=True)),
            L.Bidirectional(L.LSTM(4)),
            L.Dense(1),
        ]
    ),
    "backwards": lambda: keras.Sequential(
        [
            keras.Input((None, 2)),
            L.LSTM(5, return_sequences=True, go_backwards=True),
            L.LSTM(4, go_backwards=True),
            L.Dense(2, activation="tanh"),
        ]
    ),
    "masked": lambda: keras.Sequential(
        [
            keras.Input((None, 2)),
            L.Masking(0.0),
            L.LSTM(8, return_sequences=True),
            L.Bidirectional(L.LSTM(4)),
            L.Dense(1, activation="sigmoid"),
        ]
    ),
    "masked_tagger": lambda: keras.Sequential(
        [
            keras.Input((None, 2)),
            L.Masking(0.0),
            L.LSTM(6, return_sequences=True),
            L.Dense(3, activation="softmax"),
        ]
    ),
    "masked_bi_steps": lambda: keras.Sequential(
        [
            keras.Input((None, 2)),
            L.Masking(0.0),
            L.LSTM(5, return_sequences=True),
            L.Bidirectional(L.LSTM(4, return_sequences=True)),
            L.TimeDistributed(L.Dense(2, activation="sigmoid")),
        ]
    ),
    "weather": lambda: _functional(  # keras.io's weather forecasting, as its code builds it
        lambda x: L.Dense(1)(L.LSTM(32)(x)), features=7
    ),
    "imdb_like": lambda: _functional(  # keras.io's IMDB bidirectional model, without Embedding
        lambda x: L.Dense(1, activation="sigmoid")(
            L.Bidirectional(L.LSTM(16))(L.Bidirectional(L.LSTM(16, return_sequences=True))(x))
        ),
        features=4,
    ),
    "dense_stack": lambda: keras.Sequential(  # the stock-price tutorial's LSTM, LSTM, 25, 1
        [
            keras.Input((None, 2)),
            L.LSTM(12, return_sequences=True),
            L.LSTM(8),
            L.Dense(25, activation="relu"),
            L.Dropout(0.2),
            L.Dense(1),
        ]
    ),
    "masked_average": lambda: keras.Sequential(
        [
            keras.Input((None, 2)),
            L.Masking(0.0),
            L.LSTM(6, return_sequences=True),
            L.GlobalAveragePooling1D(),
            L.Dense(4, activation="tanh"),
            L.Dense(2, activation="softmax"),
        ]
    ),
    "max_pool": lambda: keras.Sequential(
        [
            keras.Input((None, 2)),
            L.Bidirectional(L.LSTM(5, return_sequences=True)),
            L.GlobalMaxPooling1D(),
            L.Dense(3),
        ]
    ),
    "hard_sigmoid": lambda: keras.Sequential(
        [
            keras.Input((None, 2)),
            L.LSTM(6, recurrent_activation="hard_sigmoid", return_sequences=True),
            L.TimeDistributed(L.Dense(3, activation="relu")),
        ]
    ),
    "dense_per_step": lambda: keras.Sequential(
        [keras.Input((None, 2)), L.LSTM(6, return_sequences=True), L.Dense(2)]
    ),
}


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("keras")
    keras.utils.set_random_seed(0)
    built = {}
    for name, build in MODELS.items():
        model = build()
        model.save(folder / f"{name}.keras")
        model.save(folder / f"{name}.h5")
        built[name] = (model, folder)
    return built


@pytest.fixture(scope="module")
def repository(
    keras_models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("models")
    for name, (_, folder) in keras_models.items():
        for suffix in ("keras", "h5"):
            args = ["--keras", str(folder / f"{name}.{suffix}"), "--name", f"{name}-{suffix}"]
            args += ["--repository", str(root)]
            if name == "seed":  # the real command line once per format
                run = export(*args)
                assert run.returncode == 0, run.stderr
                assert "Verification passed" in run.stdout and "17,152" in run.stdout
            else:
                assert export_main(args) == 0
    yield root


@pytest.fixture(scope="module")
async def client(repository: Path) -> AsyncIterator[AsyncLstmClient]:
    server: LstmServer = await start_server(repository=repository)
    async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
        yield client
    await server.stop(grace=1)


def inputs(model: Any, name: str) -> np.ndarray:
    rng = np.random.default_rng(len(name))
    features = model.inputs[0].shape[-1]
    steps = 10 if name == "seed" else 13
    x = rng.standard_normal((5, steps, features)).astype(np.float32)
    if name.startswith("masked"):  # the mask value anywhere, as Keras skips it anywhere
        x[0, :4] = 0.0  # padded before, as keras.utils.pad_sequences pads by default
        x[1, 9:] = 0.0  # padded after
        x[2, [1, 5, 6]] = 0.0  # holes
        x[3, [0, 2, 12]] = 0.0  # a hole, and padding at both ends
    return x


@pytest.mark.parametrize("suffix", ["keras", "h5"])
@pytest.mark.parametrize("name", list(MODELS))
async def test_served_answers_equal_model_predict(
    keras_models: dict[str, Any], client: AsyncLstmClient, name: str, suffix: str
) -> None:
    model, _ = keras_models[name]
    x = inputs(model, name)
    expected = np.asarray(model.predict(x, verbose=0))
    answer = await client.predict(f"{name}-{suffix}", x)  # the model's own answer
    got = answer.prediction if answer.prediction is not None else answer.last_hidden
    assert got is not None and got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE  # every step, masked ones included


async def test_describe_shows_the_keras_layer_table(client: AsyncLstmClient) -> None:
    described = await client.describe("stack3-keras")
    assert described.source.startswith("keras 3") and described.source.endswith(".keras")
    assert described.head.units == 3 and described.head.activation == "softmax"
    seed_table = await client.describe("seed-h5")
    assert [layer.keras_parameters for layer in seed_table.layers] == [17152, 12416]
    masked = await client.describe("masked-keras")
    assert masked.HasField("mask_value") and masked.mask_value == 0.0
    hard = await client.describe("hard_sigmoid-keras")
    assert (
        list(hard.layers[0].activations) == ["HardSigmoid", "Tanh"] and not hard.layers[0].no_bias
    )
    stack = await client.describe("dense_stack-keras")
    assert [(d.units, d.activation) for d in stack.head.hidden] == [(25, "relu")]
    assert (stack.head.units, stack.head.input) == (1, "final-states")
    pooled = await client.describe("masked_average-h5")
    assert pooled.head.input == "mean" and [d.units for d in pooled.head.hidden] == [4]


async def test_masked_steps_anywhere_give_keras_sequences_and_batch_exactly(
    keras_models: dict[str, Any], client: AsyncLstmClient
) -> None:
    """`sequence` of a Masking model is Keras's last LSTM output at every step (repeated at a
    masked step, zeros before the first unmasked one; zeros there when Bidirectional), and a
    batch of such rows answers each as it is alone."""
    for name in ("masked_tagger", "masked_bi_steps"):
        model, _ = keras_models[name]
        x = inputs(model, name)
        lstm_out = keras.Model(model.inputs, model.layers[-2].output)
        expected = np.asarray(lstm_out.predict(x, verbose=0))
        together = await client.predict(f"{name}-keras", x, output="sequence")
        assert together.sequence is not None
        assert np.abs(together.sequence - expected).max() <= TOLERANCE, name
        for row in range(x.shape[0]):
            alone = await client.predict(f"{name}-keras", x[row : row + 1], output="sequence")
            assert alone.sequence is not None
            np.testing.assert_array_equal(alone.sequence[0], together.sequence[row])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.predict("masked-keras", np.zeros((1, 4, 2), np.float32))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "masked at every step" in str(err.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.predict("seed-keras", np.ones((1, 3, 2), np.float32), output="prediction")
    assert "this model has no head" in str(err.value.details())


def test_tf_keras_2_h5_written_with_h5py(tmp_path: Path) -> None:
    """tf.keras 2.x's layout: `lstm/lstm/lstm_cell/kernel:0`, split layer_names, Keras 2's
    hard_sigmoid (0.2 x + 0.5); compared with Keras 3 running the same weights."""
    rng = np.random.default_rng(3)
    kernel, recurrent, bias = (
        rng.standard_normal(shape).astype(np.float32) * 0.5 for shape in ((2, 16), (4, 16), (16,))
    )
    dense_kernel, dense_bias = (
        rng.standard_normal((4, 2)).astype(np.float32),
        np.ones(2, np.float32),
    )
    lstm = {
        "name": "lstm",
        "units": 4,
        "activation": "tanh",
        "recurrent_activation": "hard_sigmoid",
        "return_sequences": False,
        "use_bias": True,
        "time_major": False,
    }
    config = {
        "class_name": "Sequential",
        "config": {
            "name": "sequential",
            "layers": [
                {"class_name": "InputLayer", "config": {"batch_input_shape": [None, None, 2]}},
                {"class_name": "LSTM", "config": lstm},
                {
                    "class_name": "Dense",
                    "config": {"name": "dense", "units": 2, "activation": "linear"},
                },
            ],
        },
    }
    path = tmp_path / "tf2.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["keras_version"] = b"2.12.0"
        f.attrs["backend"] = b"tensorflow"
        weights = f.create_group("model_weights")
        weights.attrs["layer_names0"] = [b"lstm"]  # split, as Keras does for long lists
        weights.attrs["layer_names1"] = [b"dense"]
        layer = weights.create_group("lstm")
        names = [
            b"lstm/lstm_cell/kernel:0",
            b"lstm/lstm_cell/recurrent_kernel:0",
            b"lstm/lstm_cell/bias:0",
        ]
        layer.attrs["weight_names"] = names
        for name, array in zip(names, (kernel, recurrent, bias), strict=True):
            layer.create_dataset(name.decode(), data=array)
        dense = weights.create_group("dense")
        dense.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        dense.create_dataset("dense/kernel:0", data=dense_kernel)
        dense.create_dataset("dense/bias:0", data=dense_bias)
    assert export_main(["--keras", str(path), "--name", "tf2", "--repository", str(tmp_path)]) == 0

    keras2_hard_sigmoid = lambda v: keras.ops.clip(0.2 * v + 0.5, 0.0, 1.0)  # noqa: E731
    same = keras.Sequential(
        [keras.Input((None, 2)), L.LSTM(4, recurrent_activation=keras2_hard_sigmoid), L.Dense(2)]
    )
    same.layers[0].set_weights([kernel, recurrent, bias])
    same.layers[1].set_weights([dense_kernel, dense_bias])
    x = rng.standard_normal((3, 7, 2)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "tf2/1/model.onnx"))
    zeros = np.zeros((1, 3, 4), np.float32)
    feeds = {
        "input": x,
        "lengths": np.full(3, 7, np.int32),
        "initial_h_0": zeros,
        "initial_c_0": zeros,
    }
    (got,) = session.run(["prediction"], feeds)
    assert np.abs(got - np.asarray(same.predict(x, verbose=0))).max() <= TOLERANCE


async def test_a_head_keeps_batching_exact_and_state_carried(
    keras_models: dict[str, Any], client: AsyncLstmClient
) -> None:
    """Concurrent calls share batches, bit for bit what each gets alone; chunks with carried
    state (client-held and server-held) end where the whole sequence ends."""
    rng = np.random.default_rng(5)
    cases = [
        rng.standard_normal((2, int(n), 3)).astype(np.float32) for n in rng.integers(1, 20, 24)
    ]
    alone = [await client.predict("stack3-keras", x) for x in cases]
    together = await asyncio.gather(*(client.predict("stack3-keras", x) for x in cases))
    for a, b in zip(alone, together, strict=True):
        assert a.prediction is not None and b.prediction is not None
        assert a.prediction.tobytes() == b.prediction.tobytes()
    x = rng.standard_normal((1, 15, 3)).astype(np.float32)
    whole = await client.predict("stack3-keras", x)
    first = await client.predict("stack3-keras", x[:, :6], return_state=True)
    rest = await client.predict("stack3-keras", x[:, 6:], initial_state=first.states)
    held = [
        await client.predict(
            "stack3-keras",
            x[:, a:b],
            sequence_id="head",
            sequence_start=a == 0,
            sequence_end=b == 15,
        )
        for a, b in ((0, 4), (4, 11), (11, 15))
    ]
    assert whole.prediction is not None
    for answer in (rest, held[-1]):
        assert answer.prediction is not None
        assert np.abs(answer.prediction - whole.prediction).max() <= 1e-6
