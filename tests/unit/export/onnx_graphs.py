"""The ONNX files people bring, built as their tools build them: torch.onnx.export (the
TorchScript-based exporter and the default dynamo one), a hand-built graph of LSTM nodes as in a
Triton model repository, and a tf2onnx-shaped graph of a Keras model. Each is written to a path
and returned with how to run it (its input's layout, its lengths input)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from lstm_export.torch_source import onnx_gates
from tests.helpers import ROOT


@dataclass(frozen=True)
class Original:
    """A user's ONNX file and how to call it."""

    path: Path
    answer: str  # the output that equals the adopted model's own answer
    tokens: int = 0  # a text model's vocabulary; 0: features
    features: int = 0
    time_major: bool = False
    lengths: str = ""  # the input feeding sequence_lens, if any
    carries_state: bool = True  # every LSTM runs forward

    def run(self, x: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
        """The file run by ONNX Runtime on batch-first `x` (all steps valid)."""
        session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        given = np.ascontiguousarray(np.swapaxes(x, 0, 1)) if self.time_major else x
        feeds = {session.get_inputs()[0].name: given}
        if self.lengths:
            feeds[self.lengths] = np.full(x.shape[0], x.shape[1], np.int32)
        return [np.asarray(a) for a in session.run(outputs or [self.answer], feeds)]

    def inputs(self, batch: int, time: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if self.tokens:
            return rng.integers(0, self.tokens, size=(batch, time), dtype=np.int64)
        return rng.standard_normal((batch, time, self.features)).astype(np.float32)


class LastStepHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(5, 8, num_layers=2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        last: torch.Tensor = self.fc(out[:, -1])
        return last


class FinalStateHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(5, 8, num_layers=2, batch_first=True)
        self.hidden = nn.Linear(8, 6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.lstm(x)
        return torch.sigmoid(self.fc(torch.relu(self.hidden(h_n[-1]))))


class TimeMajorText(nn.Module):
    """ids [time, batch] -> Embedding -> bidirectional 2-layer LSTM -> softmax(fc(both h_n))."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 4)
        self.lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.lstm(self.embed(ids))
        return torch.softmax(self.fc(torch.cat((h_n[-2], h_n[-1]), 1)), -1)


def torch_legacy(path: Path) -> Original:
    """torch.onnx.export(dynamo=False): the TorchScript-based exporter."""
    _in_own_process("legacy", path)
    return Original(path, "y", features=5)


def torch_dynamo(path: Path) -> Original:
    """torch.onnx.export's default exporter (torch.export, then onnxscript)."""
    _in_own_process("dynamo", path)
    return Original(path, "y", features=5)


def torch_legacy_text(path: Path) -> Original:
    _in_own_process("legacy-text", path)
    return Original(path, "y", tokens=20, time_major=True, carries_state=False)


def _in_own_process(kind: str, path: Path) -> None:
    """Exported as a user's script does, in a fresh interpreter: in the test process, state
    other tests' torch.export calls leave makes the dynamo exporter fix the time axis."""
    script = [sys.executable, "-m", "tests.unit.export.onnx_graphs", kind, str(path)]
    done = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _export_in_this_process(kind: str, path: Path) -> None:
    torch.manual_seed(0)
    if kind == "legacy":
        _export(LastStepHead().eval(), torch.zeros(2, 7, 5), path, dynamo=False)
    elif kind == "dynamo":
        _export(FinalStateHead().eval(), torch.zeros(2, 7, 5), path, dynamo=True)
    else:
        ids = torch.zeros(7, 2, dtype=torch.int64)
        _export(TimeMajorText().eval(), ids, path, dynamo=False, time_major=True)


def _export(
    module: nn.Module, example: torch.Tensor, path: Path, dynamo: bool, time_major: bool = False
) -> None:
    batch, time = (1, 0) if time_major else (0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' own deprecation and tracer notes
        if dynamo:
            dims = {"x": {batch: torch.export.Dim("b"), time: torch.export.Dim("t")}}
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=["x"],
                output_names=["y"],
                dynamic_shapes=dims,
                verbose=False,
            )
        else:
            axes = {"x": {batch: "b", time: "t"}, "y": {0: "b"}}
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes=axes,
            )


def _save(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[str],
    weights: dict[str, np.ndarray],
    path: Path,
    producer: str,
) -> None:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version, model.producer_name = 8, producer
    onnx.save(model, str(path))


def _lstm_weights(
    rng: np.random.Generator, inputs: int, units: int, directions: int
) -> dict[str, np.ndarray]:
    def draw(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.4).astype(np.float32)

    return {
        "W": draw(directions, 4 * units, inputs),
        "R": draw(directions, 4 * units, units),
        "B": draw(directions, 8 * units),
    }


def triton_graph(path: Path) -> Original:
    """As a Triton repository's model.onnx may be, built by hand: INPUT__0 and SEQLEN in, two
    forward LSTM nodes with sequence_lens, outputs the last layer's steps and final hidden
    state, and the first layer's final cell state as the LSTM node gives it."""
    rng = np.random.default_rng(3)
    weights: dict[str, np.ndarray] = {}
    for k, (width, units) in enumerate(((4, 6), (6, 5))):
        weights |= {f"{n}{k}": a for n, a in _lstm_weights(rng, width, units, 1).items()}
    weights |= {"axis0": np.array([0]), "axis1": np.array([1])}
    nodes = [
        helper.make_node("Transpose", ["INPUT__0"], ["x_tbf"], perm=[1, 0, 2]),
        helper.make_node(
            "LSTM",
            ["x_tbf", "W0", "R0", "B0", "SEQLEN"],
            ["y0", "h0", "c0"],
            hidden_size=6,
            name="lstm_a",
        ),
        helper.make_node("Squeeze", ["y0", "axis1"], ["x1"]),
        helper.make_node(
            "LSTM", ["x1", "W1", "R1", "B1", "SEQLEN"], ["y1", "h1"], hidden_size=5, name="lstm_b"
        ),
        helper.make_node("Squeeze", ["y1", "axis1"], ["y1_tbh"]),
        helper.make_node("Transpose", ["y1_tbh"], ["OUTPUT__SEQUENCE"], perm=[1, 0, 2]),
        helper.make_node("Squeeze", ["h1", "axis0"], ["OUTPUT__HIDDEN"]),
        helper.make_node("Identity", ["c0"], ["OUTPUT__CELL0"]),
    ]
    inputs = [
        helper.make_tensor_value_info("INPUT__0", TensorProto.FLOAT, ["batch", "time", 4]),
        helper.make_tensor_value_info("SEQLEN", TensorProto.INT32, ["batch"]),
    ]
    outputs = ["OUTPUT__HIDDEN", "OUTPUT__SEQUENCE", "OUTPUT__CELL0"]
    _save(nodes, inputs, outputs, weights, path, "hand-built")
    return Original(path, "OUTPUT__HIDDEN", features=4, lengths="SEQLEN")


def tf2onnx_graph(path: Path) -> Original:
    """As tf2onnx writes a Keras LSTM(7) -> Dense(3, softmax): the LSTM node between
    Transposes, Keras's gate order (i, f, c, o) already turned into ONNX's, zero initial states
    built from the input's shape, Y_h squeezed, MatMul + Add, Softmax."""
    rng = np.random.default_rng(4)
    units, features = 7, 3
    kernel = (rng.standard_normal((features, 4 * units)) * 0.4).astype(np.float32)  # Keras's
    recurrent = (rng.standard_normal((units, 4 * units)) * 0.4).astype(np.float32)
    bias = (rng.standard_normal(4 * units) * 0.4).astype(np.float32)
    weights = {
        "W": onnx_gates(kernel.T)[None],
        "R": onnx_gates(recurrent.T)[None],
        "B": np.concatenate([onnx_gates(bias), np.zeros(4 * units, np.float32)])[None],
        "dense/kernel": (rng.standard_normal((units, 3)) * 0.4).astype(np.float32),
        "dense/bias": (rng.standard_normal(3) * 0.4).astype(np.float32),
        "const_one": np.array([1]),
        "const_units": np.array([units]),
        "const_zero": np.array([0]),
    }
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["lstm/transpose"], perm=[1, 0, 2]),
        helper.make_node("Shape", ["input_1"], ["lstm/Shape"]),
        helper.make_node("Gather", ["lstm/Shape", "const_zero"], ["lstm/batch"], axis=0),
        helper.make_node(
            "Concat", ["const_one", "lstm/batch", "const_units"], ["lstm/zeros_shape"], axis=0
        ),
        helper.make_node(
            "ConstantOfShape",
            ["lstm/zeros_shape"],
            ["lstm/zeros"],
            value=numpy_helper.from_array(np.array([0], np.float32)),
        ),
        helper.make_node(
            "LSTM",
            ["lstm/transpose", "W", "R", "B", "", "lstm/zeros", "lstm/zeros"],
            ["lstm/Y", "lstm/Y_h"],
            hidden_size=units,
            direction="forward",
            name="lstm/LSTM",
        ),
        helper.make_node("Squeeze", ["lstm/Y_h", "const_zero"], ["lstm/h"]),
        helper.make_node("MatMul", ["lstm/h", "dense/kernel"], ["dense/MatMul"]),
        helper.make_node("Add", ["dense/MatMul", "dense/bias"], ["dense/BiasAdd"]),
        helper.make_node("Softmax", ["dense/BiasAdd"], ["dense"], axis=-1),
    ]
    inputs = [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__1", "unk__2", 3])]
    _save(nodes, inputs, ["dense"], weights, path, "tf2onnx")
    return Original(path, "dense", features=features)


GRAPHS = {
    "torch-legacy": torch_legacy,
    "torch-dynamo": torch_dynamo,
    "torch-legacy-text": torch_legacy_text,
    "triton": triton_graph,
    "tf2onnx": tf2onnx_graph,
}


if __name__ == "__main__":
    _export_in_this_process(sys.argv[1], Path(sys.argv[2]))
