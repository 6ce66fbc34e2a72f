"""Writes a StackedLSTM as an ONNX graph of native LSTM nodes, one per layer.

Not torch.onnx.export: its graphs hide `sequence_lens` (see shared/DESIGN.md), and exact
padded batching needs it. The graph is time-major inside (ONNX Runtime refuses layout=1)
with Transposes at the edges, so the public interface stays batch-first.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from lstm_serving.contract import (
    INPUT,
    LAST_HIDDEN,
    LENGTHS,
    METADATA_KEY,
    SEQUENCE,
    STATE_PARTS,
    Architecture,
    final_state,
    initial_state,
)
from lstm_serving.export.model import StackedLSTM
from lstm_serving.version import __version__

OPSET = 17
PRODUCER = "lstm-serving"
PRODUCER_VERSION = __version__
# PyTorch stores gate blocks as i, f, g, o; ONNX wants i, o, f, c (c is PyTorch's g).
_TORCH_TO_ONNX_GATES = (0, 3, 1, 2)


def _onnx_gates(weight: np.ndarray) -> np.ndarray:
    """Reorders the 4 gate blocks along axis 0 from PyTorch's order to ONNX's."""
    blocks = np.split(weight, 4, axis=0)
    return np.concatenate([blocks[i] for i in _TORCH_TO_ONNX_GATES], axis=0)


def layer_weights(lstm: torch.nn.LSTM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX W [D, 4H, in], R [D, 4H, H] and B [D, 8H] (B = [W_b, R_b]) of one torch layer."""
    suffixes = ["_l0", "_l0_reverse"] if lstm.bidirectional else ["_l0"]
    w, r, b = [], [], []
    for sfx in suffixes:
        params = {
            name: getattr(lstm, name + sfx).detach().cpu().numpy().astype(np.float32)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        }
        w.append(_onnx_gates(params["weight_ih"]))
        r.append(_onnx_gates(params["weight_hh"]))
        b.append(np.concatenate([_onnx_gates(params["bias_ih"]), _onnx_gates(params["bias_hh"])]))
    return np.stack(w), np.stack(r), np.stack(b)


def weights_sha256(module: StackedLSTM) -> str:
    """A hash of every parameter, in state_dict order, to tie a model file to its weights."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().astype(np.float32).tobytes())
    return digest.hexdigest()


def architecture_of(module: StackedLSTM) -> Architecture:
    return Architecture.build(
        module.input_size,
        module.units,
        module.bidirectional,
        OPSET,
        exporter=f"{PRODUCER} {PRODUCER_VERSION}",
        torch_version=torch.__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        weights_sha256=weights_sha256(module),
    )


def _value(name: str, dtype: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def build_model(module: StackedLSTM) -> onnx.ModelProto:
    """The ONNX model for `module`, its architecture recorded in metadata_props."""
    arch = architecture_of(module)
    d = module.directions
    direction = "bidirectional" if module.bidirectional else "forward"
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    inputs = [
        _value(INPUT, TensorProto.FLOAT, ["batch", "time", module.input_size]),
        _value(LENGTHS, TensorProto.INT32, ["batch"]),
    ]
    outputs = [
        _value(LAST_HIDDEN, TensorProto.FLOAT, ["batch", module.output_size]),
        _value(SEQUENCE, TensorProto.FLOAT, ["batch", "time", module.output_size]),
    ]
    inits.append(numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "shape_b_"))
    if d == 1:
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1_"))
    else:
        inits.append(numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), "shape_tb_"))
    nodes.append(helper.make_node("Transpose", [INPUT], ["x_0"], perm=[1, 0, 2]))
    x = "x_0"  # time-major [T, B, features]
    for k, lstm in enumerate(module.layers):
        units = module.units[k]
        assert isinstance(lstm, torch.nn.LSTM)
        w, r, b = layer_weights(lstm)
        inits += [numpy_helper.from_array(a, f"{n}_{k}") for n, a in (("W", w), ("R", r), ("B", b))]
        initial = [initial_state(k, s) for s in STATE_PARTS]
        final = [final_state(k, s) for s in STATE_PARTS]
        inputs += [_value(n, TensorProto.FLOAT, [d, "batch", units]) for n in initial]
        outputs += [_value(n, TensorProto.FLOAT, [d, "batch", units]) for n in final]
        nodes.append(
            helper.make_node(
                "LSTM",
                [x, f"W_{k}", f"R_{k}", f"B_{k}", LENGTHS, *initial],
                [f"y_{k}", *final],
                name=f"lstm_{k}",
                hidden_size=units,
                direction=direction,
            )
        )
        # Y is [T, D, B, H]; the next layer (and `sequence`) wants [T, B, D*H].
        if d == 1:
            nodes.append(helper.make_node("Squeeze", [f"y_{k}", "axis1_"], [f"x_{k + 1}"]))
        else:
            nodes.append(helper.make_node("Transpose", [f"y_{k}"], [f"ytb_{k}"], perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [f"ytb_{k}", "shape_tb_"], [f"x_{k + 1}"]))
        x = f"x_{k + 1}"
    last = len(module.layers) - 1
    nodes.append(helper.make_node("Transpose", [x], [SEQUENCE], perm=[1, 0, 2]))
    # final_h of the last layer is [D, B, H]; last_hidden is [B, D*H], forward state first.
    last_h = final_state(last, "h")
    nodes.append(helper.make_node("Transpose", [last_h], ["hbd_"], perm=[1, 0, 2]))
    nodes.append(helper.make_node("Reshape", ["hbd_", "shape_b_"], [LAST_HIDDEN]))
    graph = helper.make_graph(nodes, "stacked_lstm", inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version=PRODUCER_VERSION,
    )
    model.ir_version = 8  # readable by every ONNX Runtime of the last few years
    helper.set_model_props(model, {METADATA_KEY: arch.to_json()})
    return model
