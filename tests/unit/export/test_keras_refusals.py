"""What the Keras import refuses, and that each refusal names the layer, the option and what
to do; real Keras 3 models (torch backend) and tf.keras 2 files written with h5py."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py  # type: ignore[import-untyped]
import keras  # type: ignore[import-untyped]  # on torch: tests/unit/export/conftest.py
import numpy as np
import pytest

from tests.helpers import export

L = keras.layers


def export_keras(path: Path, repository: Path) -> subprocess.CompletedProcess[str]:
    return export("--keras", str(path), "--name", "m", "--repository", str(repository))


def refusal(tmp_path: Path, model: Any) -> str:
    model.save(tmp_path / "m.keras")
    run = export_keras(tmp_path / "m.keras", tmp_path / "r")
    assert run.returncode == 1 and not (tmp_path / "r").exists()
    return run.stderr


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: keras.Sequential([keras.Input((None, 2)), L.Conv1D(4, 3), L.LSTM(3)]),
            "is a Conv1D, which this exporter does not map; supported: InputLayer, Embedding",
        ),
        (
            lambda: keras.Sequential(
                [keras.Input((None, 2)), L.Bidirectional(L.LSTM(3), merge_mode="sum")]
            ),
            "merge_mode='sum'; supported: 'concat' (rebuild with merge_mode='concat')",
        ),
        (
            lambda: keras.Sequential([keras.Input((None, 2)), L.LSTM(3, activation="selu")]),
            "activation='selu' cannot be expressed by ONNX's LSTM operator; supported: tanh",
        ),
        (
            lambda: keras.Sequential(
                [keras.Input((None, 2)), L.LSTM(3), L.Dense(2, activation="gelu")]
            ),
            "activation='gelu'; supported after the LSTMs: linear, relu, sigmoid, tanh, softmax",
        ),
        (
            lambda: keras.Sequential(
                [keras.Input((None, 2)), L.LSTM(3, return_sequences=True), L.Dense(4), L.LSTM(2)]
            ),
            "follows a Dense or pooling layer: the LSTMs must come first",
        ),
        (
            lambda: keras.Model(*_branching()),
            "layer 'lstm_b' (LSTM) takes 'input_layer",
        ),
        (
            lambda: keras.Sequential(
                [
                    keras.Input((None, 2)),
                    L.LSTM(3, return_sequences=True),
                    L.TimeDistributed(L.Dense(4)),
                    L.GlobalAveragePooling1D(),
                    L.Dense(1),
                ]
            ),
            "must directly follow an LSTM with return_sequences=True",
        ),
        (
            lambda: keras.Sequential(
                [keras.Input((None, 2)), L.LSTM(3, return_sequences=True), L.GlobalMaxPooling1D()]
            ),
            "the model ends in a pooling layer",
        ),
        (
            lambda: keras.Sequential(
                [
                    keras.Input((None, 2)),
                    L.Masking(0.0),
                    L.LSTM(3, return_sequences=True),
                    L.GlobalMaxPooling1D(),
                    L.Dense(1),
                ]
            ),
            "GlobalMaxPooling1D ignores the mask",
        ),
        (
            lambda: keras.Sequential([keras.Input((None, 2)), L.GRU(3)]),
            "is a GRU (a gated recurrent unit, not an LSTM): lstm-serving serves LSTMs only",
        ),
        (
            lambda: keras.Sequential([keras.Input((None, 2)), L.SimpleRNN(3)]),
            "is a SimpleRNN (a plain RNN, not an LSTM): lstm-serving serves LSTMs only",
        ),
        (
            lambda: keras.Sequential([keras.Input((None, 2)), L.Bidirectional(L.GRU(3))]),
            "Bidirectional(GRU); only Bidirectional(LSTM) is supported",
        ),
        (
            lambda: keras.Sequential(
                [keras.Input((None, 2)), L.LSTM(3, return_sequences=True), L.Masking(0.0)]
            ),
            "must come before the first LSTM",
        ),
    ],
)
def test_refusals_name_the_layer_and_what_to_do(
    tmp_path: Path, build: Callable[[], Any], message: str
) -> None:
    assert message in refusal(tmp_path, build())


def _branching() -> tuple[Any, Any]:
    """Two LSTMs side by side, concatenated: a merge, not a chain."""
    inputs = keras.Input((None, 2))
    a, b = L.LSTM(3, name="lstm_a")(inputs), L.LSTM(3, name="lstm_b")(inputs)
    return inputs, L.Dense(1)(L.Concatenate()([a, b]))


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("return_state", "return_state=True is not supported"),
        ("time_major", "time_major=True is not supported"),
    ],
)
def test_lstm_options_of_tf_keras_2_files_are_refused(
    tmp_path: Path, option: str, message: str
) -> None:
    """Options Keras 3 no longer writes, in a tf.keras 2 file made with h5py."""
    lstm = {"name": "lstm", "units": 2, option: True}
    config = {
        "class_name": "Sequential",
        "config": {"layers": [{"class_name": "LSTM", "config": lstm}]},
    }
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.11.0"
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = [b"lstm"]
        layer = weights.create_group("lstm")
        names = [b"lstm/lstm_cell/kernel:0", b"lstm/lstm_cell/recurrent_kernel:0"]
        layer.attrs["weight_names"] = names
        layer.create_dataset(names[0].decode(), data=np.zeros((3, 8), np.float32))
        layer.create_dataset(names[1].decode(), data=np.zeros((2, 8), np.float32))
    run = export_keras(path, tmp_path / "r")
    assert run.returncode == 1 and message in run.stderr


def test_stateful_is_accepted_with_a_note_and_weights_only_files_are_refused(
    tmp_path: Path,
) -> None:
    model = keras.Sequential([keras.Input((10, 2), batch_size=1), L.LSTM(3, stateful=True)])
    model.save(tmp_path / "stateful.keras")
    run = export_keras(tmp_path / "stateful.keras", tmp_path / "r")
    assert run.returncode == 0, run.stderr
    assert "stateful=True" in run.stdout and "State across calls" in run.stdout
    model.save_weights(tmp_path / "only.weights.h5")
    weights_only = export_keras(tmp_path / "only.weights.h5", tmp_path / "r2")
    assert weights_only.returncode == 1 and "save the whole model" in weights_only.stderr
