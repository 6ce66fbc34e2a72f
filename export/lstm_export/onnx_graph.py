"""Writes a ModelSpec as an ONNX graph of native LSTM nodes, one per layer, and its head.

Not torch.onnx.export: its graphs hide `sequence_lens` (see shared/DESIGN.md), and exact
padded batching needs it. The graph is time-major inside (ONNX Runtime refuses layout=1)
with Transposes at the edges, so the public interface stays batch-first. A go_backwards
layer runs ONNX's "reverse" direction and hands on its steps in processing order (as Keras
does), reversed within each sequence's length.
Over 250 lines: one graph, its LSTM nodes, the head's input and its Dense ops, in order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lstm_export.spec import DEFAULT_ACTIVATIONS, Activation, Head, LstmLayer, ModelSpec
from lstm_serving.contract import (
    INPUT,
    LAST_HIDDEN,
    LENGTHS,
    METADATA_KEY,
    PREDICTION,
    SEQUENCE,
    STATE_PARTS,
    Architecture,
    final_state,
    initial_state,
)
from lstm_serving.version import __version__

OPSET = 17
PRODUCER = "lstm-serving"
PRODUCER_VERSION = __version__
HEAD_OPS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softmax": "Softmax"}


def architecture_of(spec: ModelSpec, weights_sha256: str, torch_version: str = "") -> Architecture:
    return Architecture(
        input_size=spec.input_size,
        layers=tuple(layer.spec() for layer in spec.layers),
        opset=OPSET,
        exporter=f"{PRODUCER} {PRODUCER_VERSION}",
        torch_version=torch_version,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        weights_sha256=weights_sha256,
        head=None if spec.head is None else spec.head.spec(),
        mask_value=spec.mask_value,
        source=spec.source,
        embedding=None if spec.embedding is None else spec.embedding.spec(),
    )


def recorded_architecture(model: onnx.ModelProto) -> Architecture:
    """The architecture record a graph carries in its metadata."""
    return Architecture.from_json({p.key: p.value for p in model.metadata_props}[METADATA_KEY])


def _value(name: str, elem: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _constant(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _dense(
    kernel: np.ndarray,
    bias: np.ndarray | None,
    activation: str,
    source: str,
    prefix: str,
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
) -> str:
    """activation(source @ kernel + bias), its tensors named with `prefix`; the output's name."""
    inits.append(numpy_helper.from_array(kernel.astype(np.float32), prefix + "kernel"))
    nodes.append(helper.make_node("MatMul", [source, prefix + "kernel"], [prefix + "mm"]))
    value = prefix + "mm"
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), prefix + "bias"))
        nodes.append(helper.make_node("Add", [value, prefix + "bias"], [prefix + "z"]))
        value = prefix + "z"
    if activation != "linear":
        kind = HEAD_OPS[activation]
        extra: dict[str, Any] = {"axis": -1} if kind == "Softmax" else {}
        nodes.append(helper.make_node(kind, [value], [prefix + "a"], **extra))
        value = prefix + "a"
    return value


def _head_input(read: str, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> str:
    """The tensor the head reads: `last_hidden`, `sequence`, or one computed from `sequence`
    (zeros past each length) over each row's valid steps."""
    if read == "final-states":
        return LAST_HIDDEN
    inits.append(numpy_helper.from_array(np.array(0, np.int64), "zero_"))
    inits.append(numpy_helper.from_array(np.array(1, np.int64), "step_"))
    inits += [_constant("axis0_", [0]), _constant("axis1_h_", [1])]
    nodes += [  # valid_ [B, T]: step < length
        helper.make_node("Shape", [INPUT], ["input_shape_"]),
        helper.make_node("Gather", ["input_shape_", "step_"], ["time_"], axis=0),
        helper.make_node("Range", ["zero_", "time_", "step_"], ["steps_"]),
        helper.make_node("Unsqueeze", ["steps_", "axis0_"], ["steps_row_"]),
        helper.make_node("Unsqueeze", ["lengths64_", "axis1_h_"], ["lengths_col_"]),
        helper.make_node("Less", ["steps_row_", "lengths_col_"], ["valid_"]),
    ]
    if read == "every-step":
        return SEQUENCE
    if read == "last-step":  # sequence[b, lengths[b] - 1]
        nodes += [
            helper.make_node("Sub", ["lengths64_", "step_"], ["last_index_"]),
            helper.make_node("Max", ["last_index_", "zero_"], ["last_index0_"]),
            helper.make_node("Unsqueeze", ["last_index0_", "axis1_h_"], ["last_index2_"]),
            helper.make_node("GatherND", [SEQUENCE, "last_index2_"], ["head_in_"], batch_dims=1),
        ]
    elif read == "mean":  # the sum of valid steps (zeros past them) over the length
        nodes += [
            helper.make_node("ReduceSum", [SEQUENCE, "axis1_h_"], ["step_sum_"], keepdims=0),
            helper.make_node("Max", ["lengths64_", "step_"], ["count_"]),
            helper.make_node("Cast", ["count_"], ["countf_"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["countf_", "axis1_h_"], ["count_col_"]),
            helper.make_node("Div", ["step_sum_", "count_col_"], ["head_in_"]),
        ]
    elif read == "max":  # steps past each length masked with -inf
        inits.append(numpy_helper.from_array(np.array(-np.inf, np.float32), "minus_inf_"))
        inits.append(_constant("axis2_m_", [2]))
        nodes += [
            helper.make_node("Unsqueeze", ["valid_", "axis2_m_"], ["valid3b_"]),
            helper.make_node("Where", ["valid3b_", SEQUENCE, "minus_inf_"], ["masked_"]),
            helper.make_node("ReduceMax", ["masked_"], ["head_in_"], axes=[1], keepdims=0),
        ]
    else:
        raise ValueError(f"unknown head input {read!r}")
    return "head_in_"


def _lstm_attributes(layer: LstmLayer) -> dict[str, Any]:
    """hidden_size and direction; activations (with alpha/beta) only where not the default."""
    attributes: dict[str, Any] = {"hidden_size": layer.units, "direction": layer.direction}
    activations: tuple[Activation, ...] = (layer.gates, layer.cell, layer.cell)
    if tuple(a.name for a in activations) != DEFAULT_ACTIVATIONS:
        per_direction = 2 if layer.direction == "bidirectional" else 1
        activations *= per_direction
        attributes["activations"] = [a.name for a in activations]
        alphas = [a.alpha for a in activations if a.alpha is not None]
        betas = [a.beta for a in activations if a.beta is not None]
        if alphas:
            attributes["activation_alpha"] = alphas
        if betas:
            attributes["activation_beta"] = betas
    return attributes


def graph_of(spec: ModelSpec, arch: Architecture) -> onnx.ModelProto:
    """The ONNX model for `spec`, its architecture recorded in metadata_props."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    inputs = [
        _value(INPUT, TensorProto.FLOAT, ["batch", "time", spec.input_size])
        if spec.embedding is None
        else _value(INPUT, TensorProto.INT64, ["batch", "time"]),
        _value(LENGTHS, TensorProto.INT32, ["batch"]),
    ]
    outputs = [
        _value(LAST_HIDDEN, TensorProto.FLOAT, ["batch", arch.output_size]),
        _value(SEQUENCE, TensorProto.FLOAT, ["batch", "time", arch.output_size]),
    ]
    inits.append(_constant("shape_b_", [0, -1]))
    if any(layer.direction != "bidirectional" for layer in spec.layers):
        inits.append(_constant("axis1_", [1]))
    if any(layer.direction == "bidirectional" for layer in spec.layers):
        inits.append(_constant("shape_tb_", [0, 0, -1]))
    if any(layer.direction == "reverse" for layer in spec.layers) or (
        spec.head is not None and spec.head.input != "final-states"
    ):
        nodes.append(helper.make_node("Cast", [LENGTHS], ["lengths64_"], to=TensorProto.INT64))
    features = INPUT
    if spec.embedding is not None:  # token ids [B, T] -> their rows [B, T, width]
        table = spec.embedding.table.astype(np.float32)
        inits.append(numpy_helper.from_array(table, "embedding_"))
        nodes.append(helper.make_node("Gather", ["embedding_", INPUT], ["embedded_"], axis=0))
        features = "embedded_"
    nodes.append(helper.make_node("Transpose", [features], ["x_0"], perm=[1, 0, 2]))
    x = "x_0"  # time-major [T, B, features]
    for k, layer in enumerate(spec.layers):
        d = 2 if layer.direction == "bidirectional" else 1
        inits += [
            numpy_helper.from_array(a.astype(np.float32), f"{n}_{k}")
            for n, a in (("W", layer.W), ("R", layer.R), ("B", layer.B))
        ]
        initial = [initial_state(k, s) for s in STATE_PARTS]
        final = [final_state(k, s) for s in STATE_PARTS]
        inputs += [_value(n, TensorProto.FLOAT, [d, "batch", layer.units]) for n in initial]
        outputs += [_value(n, TensorProto.FLOAT, [d, "batch", layer.units]) for n in final]
        nodes.append(
            helper.make_node(
                "LSTM",
                [x, f"W_{k}", f"R_{k}", f"B_{k}", LENGTHS, *initial],
                [f"y_{k}", *final],
                name=f"lstm_{k}",
                **_lstm_attributes(layer),
            )
        )
        # Y is [T, D, B, H]; the next layer (and `sequence`) wants [T, B, D*H].
        steps = f"x_{k + 1}" if layer.direction != "reverse" else f"yr_{k}"
        if d == 1:
            nodes.append(helper.make_node("Squeeze", [f"y_{k}", "axis1_"], [steps]))
        else:
            nodes.append(helper.make_node("Transpose", [f"y_{k}"], [f"ytb_{k}"], perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [f"ytb_{k}", "shape_tb_"], [steps]))
        if layer.direction == "reverse":  # processing order, as Keras's go_backwards returns
            nodes.append(
                helper.make_node(
                    "ReverseSequence",
                    [steps, "lengths64_"],
                    [f"x_{k + 1}"],
                    batch_axis=1,
                    time_axis=0,
                )
            )
        x = f"x_{k + 1}"
    last = len(spec.layers) - 1
    nodes.append(helper.make_node("Transpose", [x], [SEQUENCE], perm=[1, 0, 2]))
    # final_h of the last layer is [D, B, H]; last_hidden is [B, D*H], forward state first.
    last_h = final_state(last, "h")
    nodes.append(helper.make_node("Transpose", [last_h], ["hbd_"], perm=[1, 0, 2]))
    nodes.append(helper.make_node("Reshape", ["hbd_", "shape_b_"], [LAST_HIDDEN]))
    if spec.head is not None:
        _add_head(spec.head, nodes, inits, outputs)
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


def _add_head(
    head: Head,
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    outputs: list[onnx.ValueInfoProto],
) -> None:
    """Dense on what the head reads (contract.HEAD_INPUTS) of `sequence` and `last_hidden`,
    each row's valid steps only, then its activation; a per-step answer is zero past each
    length (as `sequence` is)."""
    value = _head_input(head.input, nodes, inits)
    for k, layer in enumerate(head.dense_layers):
        value = _dense(layer.kernel, layer.bias, layer.activation, value, f"head{k}_", nodes, inits)
    shape: list[int | str] = ["batch", head.kernel.shape[1]]
    if head.per_step:
        shape.insert(1, "time")
        inits.append(_constant("axis2_", [2]))
        nodes += [
            helper.make_node("Cast", ["valid_"], ["validf_"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["validf_", "axis2_"], ["valid3_"]),
            helper.make_node("Mul", [value, "valid3_"], [PREDICTION]),
        ]
    else:
        nodes.append(helper.make_node("Identity", [value], [PREDICTION]))
    outputs.append(_value(PREDICTION, TensorProto.FLOAT, shape))
