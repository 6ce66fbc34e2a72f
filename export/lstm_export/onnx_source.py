"""An ONNX model someone already has -> a ModelSpec: a recurrence of ONNX `LSTM` nodes with
constant weights, read node by node (as `program_source` reads a torch.export program) into
what it computes, never guessed.

Mapped: a Gather of an embedding table in front (token ids in); the Transposes, Squeezes,
Unsqueezes and Reshapes that move axes around; zero initial states however they are built
(ConstantOfShape, Expand, Slices of them); a `sequence_lens` input, or none; what a head reads
of the last LSTM (the last step by Gather or Slice, the final states Y_h, ReduceMean or
ReduceMax over time, every step); Gemm or MatMul + Add layers, each with Relu, Tanh, Sigmoid or
Softmax after it. Shape arithmetic (Shape and what is computed from it) is plumbing. Every
graph output is named for what it is in our graph (`prediction`, `last_hidden`, `sequence`, a
layer's final state) or refused; any other node is refused, named, with what to do instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from lstm_export.spec import Activation, Dense, Embedding, Head, LstmLayer, ModelSpec
from lstm_serving.contract import LAST_HIDDEN, PREDICTION, SEQUENCE, final_state


class AdoptionError(Exception):
    """A graph this reader cannot map; the message names the node and what to do."""


INSTEAD = "export the source model instead (lstm-export --torch, --keras or --weights)"
ACTIVATIONS = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "Softmax": "softmax"}
LSTM_ACTIVATIONS = ("Sigmoid", "Tanh", "Relu")  # those without alpha/beta
RECURRENT = ("Loop", "Scan", "GRU", "RNN")
# ops that keep zeros zeros, whatever their other (constant or shape) inputs
ZERO_KEEPING = {
    "Slice", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Cast", "Identity", "Concat",
    "Expand", "Tile",
}  # fmt: skip
FLOAT_TYPES = {onnx.TensorProto.FLOAT}
INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
# Axis labels: B batch, T time, F input features, D directions, H units, DH directions x units
# (each step's output, forward half first), U a Dense's units, 1 a kept axis of size 1, LD
# layers x directions (torch's h_n), X0/X1 the input's first two axes until an LSTM says which
# is time.


@dataclass(frozen=True, eq=False)
class Value:
    """What one tensor of the graph is."""

    kind: str  # const shape zeros features tokens seqlens seq h c hstack hpick dense other
    axes: tuple[str, ...] = ()
    layer: int = -1  # seq, h, c, hpick: the LSTM's index; dense: the Dense layer's index
    array: np.ndarray | None = None  # const
    read: str = ""  # seq: "" every step, or "last-step", "mean", "max" once selected
    picks: tuple[tuple[int, int], ...] = ()  # hstack / hpick: (layer, direction) per entry


@dataclass(frozen=True)
class OutputMap:
    """One output of the user's graph, and which of ours holds the same numbers."""

    theirs: str
    ours: str
    their_axes: tuple[str, ...]
    our_axes: tuple[str, ...]
    directions: int  # of the LSTM whose output it is (splits our DH axis)


@dataclass
class Adopted:
    """What the reader found: the spec, and how to run the user's graph as they made it."""

    spec: ModelSpec
    original: onnx.ModelProto
    input: str
    input_type: type[np.generic]  # np.float32, or the token ids' integer type
    lengths: str | None  # the input feeding sequence_lens, if there is one
    lengths_type: type[np.generic]
    time_major: bool  # the input is [time, batch, ...]
    fixed: tuple[int | None, int | None]  # (batch, time) sizes the input declares, None: any
    outputs: list[OutputMap]


@dataclass
class Walk:
    values: dict[str, Value] = field(default_factory=dict)
    layers: list[LstmLayer] = field(default_factory=list)
    dense: list[Dense] = field(default_factory=list)
    head_input: str | None = None
    embedding: Embedding | None = None
    time_axis: str | None = None  # "X0" or "X1": the input's axis the first LSTM reads as time
    ranks: dict[str, int] = field(default_factory=dict)
    opset: int = 17

    def directions(self, layer: int) -> int:
        return 2 if self.layers[layer].direction == "bidirectional" else 1


def read_onnx(path: Path) -> Adopted:
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf and onnx raise several types for files they cannot read
        raise AdoptionError(f"cannot load it as an ONNX model: {exc}") from exc
    graph = model.graph
    if not any(node.op_type == "LSTM" for node in graph.node):
        raise AdoptionError(f"the graph has no LSTM node: {_recurrence_hint(graph)}")
    walk = Walk(opset=_opset(model), ranks=_ranks(model))
    for tensor in graph.initializer:
        walk.values[tensor.name] = Value("const", array=numpy_helper.to_array(tensor))
    data, lengths = _inputs(graph, walk)
    for node in graph.node:
        for name, value in zip(node.output, _meaning(node, walk), strict=False):
            if name:
                walk.values[name] = value
    outputs = [_output(o.name, walk) for o in graph.output]
    head = None
    if walk.dense:
        if not any(o.ours == PREDICTION for o in outputs):
            raise AdoptionError("the Dense layers' result is not an output of the graph")
        *hidden, last = walk.dense
        assert walk.head_input is not None
        head = Head(
            last.kernel, last.bias, last.activation, walk.head_input, tuple(hidden), last.name
        )
    mapping = ", ".join(f"{o.theirs} -> {o.ours}" for o in outputs)
    producer = f" ({model.producer_name})" if model.producer_name else ""
    source = f"ONNX {path.name}{producer}; its outputs: {mapping}"
    dims = list(data.type.tensor_type.shape.dim)
    time_major = walk.time_axis == "X0"
    batch_dim, time_dim = (dims[1], dims[0]) if time_major else (dims[0], dims[1])
    notes = [
        f"the file fixes the {axis} size at {_fixed(dim)}: verified at that size (the adopted "
        "model takes any)"
        for axis, dim in (("batch", batch_dim), ("time", time_dim))
        if _fixed(dim)
    ]
    spec = ModelSpec(walk.layers, head, source=source, notes=notes, embedding=walk.embedding)
    return Adopted(
        spec,
        model,
        data.name,
        _numpy_type(data),
        None if lengths is None else lengths.name,
        np.int32 if lengths is None else _numpy_type(lengths),
        time_major,
        (_fixed(batch_dim), _fixed(time_dim)),
        outputs,
    )


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Each tensor's rank where ONNX's shape inference knows it (Reshape needs it)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is a help here, not a requirement
        return {}
    infos = [*inferred.graph.value_info, *inferred.graph.output]
    return {
        info.name: len(info.type.tensor_type.shape.dim)
        for info in infos
        if info.type.tensor_type.HasField("shape")
    }


def _fixed(dim: onnx.TensorShapeProto.Dimension) -> int | None:
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None


def _numpy_type(info: onnx.ValueInfoProto) -> type[np.generic]:
    return helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type).type


def _inputs(
    graph: onnx.GraphProto, walk: Walk
) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto | None]:
    """The one sequence input (features or token ids) and the lengths input, if any."""
    given = [i for i in graph.input if i.name not in walk.values]
    data, lengths = [], []
    for info in given:
        tensor = info.type.tensor_type
        rank = len(tensor.shape.dim) if tensor.HasField("shape") else -1
        if tensor.elem_type in FLOAT_TYPES and rank == 3:
            data.append(info)
            walk.values[info.name] = Value("features", ("X0", "X1", "F"))
        elif tensor.elem_type in INT_TYPES and rank == 2:
            data.append(info)
            walk.values[info.name] = Value("tokens", ("X0", "X1"))
        elif tensor.elem_type in INT_TYPES and rank == 1:
            lengths.append(info)
            walk.values[info.name] = Value("seqlens", ("B",))
        else:
            kind = helper.tensor_dtype_to_string(tensor.elem_type)
            raise AdoptionError(
                f"input {info.name} ({kind}, rank {rank}) is not mapped: the graph may take one "
                "sequence input (float [batch, time, features] or integer token ids "
                "[batch, time], either axis first) and its lengths (integer [batch])"
            )
    if len(data) != 1 or len(lengths) > 1:
        names = ", ".join(i.name for i in given)
        raise AdoptionError(
            f"the graph takes {len(given)} inputs ({names}): one sequence input and, "
            "optionally, its lengths are mapped (state inputs are not: lstm-serve carries "
            f"state itself, see docs/sequences.md); {INSTEAD}"
        )
    return data[0], (lengths[0] if lengths else None)


def _recurrence_hint(graph: onnx.GraphProto) -> str:
    for node in graph.node:
        if node.op_type in RECURRENT:
            return f"its recurrence is a {_where(node)}, which is not mapped; {INSTEAD}"
    return f"lstm-export adopts graphs built of ONNX LSTM nodes; {INSTEAD}"


def _name(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def _where(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {_name(node)}"


def _attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _meaning(node: onnx.NodeProto, walk: Walk) -> list[Value]:
    """What each output of one node is, or a refusal naming it."""
    given = [walk.values.get(name) if name else None for name in node.input]
    for name, value in zip(node.input, given, strict=True):
        if name and value is None:
            raise AdoptionError(f"{_where(node)} reads {name}, which no node computes")
    present = [v for v in given if v is not None]
    kinds = {v.kind for v in present}
    if kinds <= {"const"} and node.op_type != "LSTM":  # fold it
        return _fold(node, given)
    if node.op_type == "Shape" or node.op_type == "Size":
        return [Value("shape")]
    if kinds <= {"const", "shape"}:
        if node.op_type == "ConstantOfShape":
            fill = _attribute(node, "value")
            zero = fill is None or not np.any(numpy_helper.to_array(fill))
            return [Value("zeros" if zero else "shape")]
        if node.op_type == "Expand" and _is_zero(given[0]):
            return [Value("zeros")]
        return [Value("shape")] * len(node.output)
    if kinds <= {"const", "shape", "zeros"} and node.op_type in ZERO_KEEPING:
        return [Value("zeros")]
    if node.op_type == "LSTM":
        return _lstm(node, walk, given)
    data = next(v for v in present if v.kind not in ("const", "shape", "zeros"))
    if data.kind == "other":
        raise AdoptionError(f"{_where(node)} reads a second output of a node, not mapped")
    if data.kind == "tokens" and node.op_type == "Gather" and given[1] is data:
        return [_embedding(node, walk, given)]
    if data is not given[0] and node.op_type not in ("Add", "Concat"):
        raise AdoptionError(f"{_where(node)} is not mapped with a {data.kind} value second")
    if data.kind == "seqlens":
        if node.op_type in ("Cast", "Identity"):
            return [data]
        raise AdoptionError(f"{_where(node)}: the lengths input may only feed sequence_lens")
    handler = HANDLERS.get(node.op_type)
    if node.op_type in RECURRENT:
        raise AdoptionError(f"{_where(node)}: a {node.op_type} recurrence is not mapped; {INSTEAD}")
    if handler is None:
        raise AdoptionError(
            f"{_where(node)} is not mapped: around the LSTM nodes a graph may hold an "
            "embedding Gather, axis moves (Transpose, Squeeze, Unsqueeze, Reshape), the head's "
            "input (last step by Gather or Slice, Y_h, ReduceMean or ReduceMax over time) and "
            f"Gemm or MatMul + Add layers with Relu, Tanh, Sigmoid or Softmax; {INSTEAD}"
        )
    return handler(node, walk, data, given)


def _is_zero(value: Value | None) -> bool:
    if value is None:
        return False
    return value.kind == "zeros" or (
        value.kind == "const" and value.array is not None and not np.any(value.array)
    )


def _fold(node: onnx.NodeProto, given: list[Value | None]) -> list[Value]:
    """A node of constants only, computed by ONNX's reference implementation."""
    feeds = {n: v.array for n, v in zip(node.input, given, strict=True) if v is not None}
    try:
        results = ReferenceEvaluator(node).run(None, feeds)
    except Exception as exc:  # the reference implementation raises many types
        raise AdoptionError(f"{_where(node)} on constants could not be computed: {exc}") from exc
    return [Value("const", array=np.asarray(r)) for r in results]


def _const(node: onnx.NodeProto, value: Value | None, what: str) -> np.ndarray:
    if value is None or value.kind != "const" or value.array is None:
        raise AdoptionError(f"{_where(node)}: its {what} must be a constant")
    return value.array


def _axes(node: onnx.NodeProto, given: list[Value | None], rank: int) -> list[int] | None:
    """The `axes` of Squeeze/Unsqueeze/Reduce*, an attribute or (newer opsets) an input."""
    axes = _attribute(node, "axes")
    if axes is None and len(given) > 1 and given[1] is not None:
        axes = _const(node, given[1], "axes").tolist()
    return None if axes is None else [int(a) % rank for a in axes]


def _relabel_single_direction(axes: tuple[str, ...]) -> tuple[str, ...]:
    """With the directions axis gone (one direction), H is each step's whole output."""
    return tuple("DH" if a == "H" else a for a in axes)


# --- nodes on a value derived from the input ---------------------------------------------


def _pass(node: onnx.NodeProto, walk: Walk, data: Value, given: list[Value | None]) -> list[Value]:
    if node.op_type == "Cast":
        to = _attribute(node, "to")
        wanted = INT_TYPES if data.kind == "tokens" else FLOAT_TYPES
        if to not in wanted:
            raise AdoptionError(f"{_where(node)}: a cast of {data.kind} to this type is not mapped")
    return [data] + [Value("other")] * (len(node.output) - 1)


def _transpose(
    node: onnx.NodeProto, walk: Walk, data: Value, given: list[Value | None]
) -> list[Value]:
    perm = _attribute(node, "perm") or list(reversed(range(len(data.axes))))
    return [replace(data, axes=tuple(data.axes[p] for p in perm))]


def _squeeze(
    node: onnx.NodeProto, walk: Walk, data: Value, given: list[Value | None]
) -> list[Value]:
    axes = _axes(node, given, len(data.axes))
    if axes is None:
        axes = [i for i, a in enumerate(data.axes) if a == "1"]
    kept = list(data.axes)
    for i in sorted(axes, reverse=True):
        label = data.axes[i]
        if label == "D" and walk.directions(data.layer) == 1:
            kept = list(_relabel_single_direction(tuple(kept)))
        elif label != "1":
            raise AdoptionError(f"{_where(node)}: a squeeze of the {label} axis is not mapped")
        del kept[i]
    return [replace(data, axes=tuple(kept))]


def _unsqueeze(
    node: onnx.NodeProto, walk: Walk, data: Value, given: list[Value | None]
) -> list[Value]:
    rank = len(data.axes) + len(_attribute(node, "axes") or _const(node, given[1], "axes"))
    axes = _axes(node, given, rank) or []
    kept = list(data.axes)
    for i in sorted(axes):
        kept.insert(i, "1")
    return [replace(data, axes=tuple(kept))]


def _reshape(
    node: onnx.NodeProto, walk: Walk, data: Value, given: list[Value | None]
) -> list[Value]:
    """The reshapes exporters write between LSTMs: [.., D, H] -> [.., D*H] (forward half first,
    as torch concatenates), a lone direction dropped, or size-1 axes dropped."""
    target = given[1]
    rank = walk.ranks.get(node.output[0])
    if rank is None and target is not None and target.kind == "const" and target.array is not None:
        rank = int(target.array.size)
    axes = data.axes
    if rank is None:
        raise AdoptionError(f"{_where(node)}: the rank of its result is not known")
    ones = tuple(a for a in axes if a != "1")
    if rank == len(axes):
        return [data]  # the same axes (a shape of [0, 0, -1]-like copies); verification checks
    if "D" in axes and "H" in axes:
        d, h = axes.index("D"), axes.index("H")
        if rank == len(axes) - 1 and h == d + 1:
            return [replace(data, axes=(*axes[:d], "DH", *axes[h + 1 :]))]
        if rank == len(axes) - 1 and walk.directions(data.layer) == 1:
            return [replace(data, axes=_relabel_single_direction(axes[:d] + axes[d + 1 :]))]
    elif rank == len(ones):
        return [replace(data, axes=ones)]
    raise AdoptionError(
        f"{_where(node)}: a reshape of a {data.kind} value with axes {list(axes)} to rank "
        f"{rank} is not mapped"
    )


def _gather(
    node: onnx.NodeProto, walk: Walk, data: Value, given: list[Value | None]
) -> list[Value]:
    axis = int(_attribute(node, "axis", 0)) % len(data.axes)
    label = data.axes[axis]
    index = _const(node, given[1], "index")
    kept = data.axes[:axis] + (("1",) if index.ndim == 1 else ()) + data.axes[axis + 1 :]
    if index.size != 1:
        raise AdoptionError(f"{_where(node)}: a gather of one index is mapped")
    i = int(index.reshape(-1)[0])
    if data.kind == "seq" and not data.read and label == "T" and i == -1:
        return [replace(data, axes=kept, read="last-step")]
    if data.kind == "h" and label == "D":
        directions = walk.directions(data.layer)
        if directions == 1:
            return [replace(data, axes=_relabel_single_direction(kept))]
        return [Value("hpick", kept, data.layer, picks=((data.layer, i % directions),))]
    if data.kind == "hstack" and label == "LD":
        layer, direction = data.picks[i]
        if walk.directions(layer) == 1:
            return [Value("h", _relabel_single_direction(kept), layer)]
        return [Value("hpick", kept, layer, picks=((layer, direction),))]
    raise AdoptionError(
        f"{_where(node)}: index {i} of the {label} axis of a {data.kind} value is not mapped "
        "(the last step, index -1 of the time axis, and final states are)"
    )


def _slice(node: onnx.NodeProto, walk: Walk, data: Value, given: list[Value | None]) -> list[Value]:
    parts = [_const(node, v, "starts/ends/axes/steps").tolist() for v in given[1:] if v]
    starts, ends = parts[0], parts[1]
    axes = parts[2] if len(parts) > 2 else list(range(len(starts)))
    steps = parts[3] if len(parts) > 3 else [1] * len(starts)
    if data.kind == "seq" and not data.read and len(axes) == 1:
        label = data.axes[int(axes[0]) % len(data.axes)]
        if label == "T" and starts == [-1] and ends[0] >= 0 and steps == [1]:
            axes_kept = tuple("1" if a == "T" else a for a in data.axes)
            return [replace(data, axes=axes_kept, read="last-step")]
    raise AdoptionError(
        f"{_where(node)}: a slice of a {data.kind} value is mapped only as the last step "
        "(starts -1 on the time axis)"
    )


def _concat(
    node: onnx.NodeProto, walk: Walk, data: Value, given: list[Value | None]
) -> list[Value]:
    axis = int(_attribute(node, "axis", 0)) % len(data.axes)
    parts = [v for v in given if v is not None]
    if all(p.kind in ("h", "hstack") and p.axes[axis] in ("D", "LD") for p in parts):
        picks: list[tuple[int, int]] = []
        for p in parts:
            picks += p.picks or [(p.layer, d) for d in range(walk.directions(p.layer))]
        axes = (*data.axes[:axis], "LD", *data.axes[axis + 1 :])
        return [Value("hstack", axes, picks=tuple(picks))]
    if all(p.kind == "hpick" for p in parts) and data.axes[axis] == "H":
        layer = parts[0].layer
        if [p.picks[0] for p in parts] == [(layer, 0), (layer, 1)]:
            return [Value("h", _relabel_single_direction(data.axes), layer)]
    raise AdoptionError(
        f"{_where(node)}: a concat of {', '.join(p.kind for p in parts)} values is not mapped "
        "(the forward and backward final states, in that order, are)"
    )


def _reduce(
    node: onnx.NodeProto, walk: Walk, data: Value, given: list[Value | None]
) -> list[Value]:
    axes = [data.axes[i] for i in _axes(node, given, len(data.axes)) or []]
    if data.kind == "seq" and not data.read and axes == ["T"]:
        keep = int(_attribute(node, "keepdims", 1))
        kept = tuple("1" if a == "T" else a for a in data.axes if keep or a != "T")
        read = "mean" if node.op_type == "ReduceMean" else "max"
        return [replace(data, axes=kept, read=read)]
    raise AdoptionError(f"{_where(node)}: a reduction over the time axis of the sequence is mapped")


def _lstm(node: onnx.NodeProto, walk: Walk, given: list[Value | None]) -> list[Value]:
    x = given[0]
    given = given + [None] * (8 - len(given))
    if int(_attribute(node, "layout", 0)) != 0:
        raise AdoptionError(
            f"{_where(node)}: layout 1 (batch first) is not mapped: ONNX Runtime does not run "
            "it, so it could not be verified"
        )
    k = len(walk.layers)
    if walk.dense:
        raise AdoptionError(f"{_where(node)}: an LSTM after the head is not mapped")
    if x is None or len(x.axes) != 3:
        raise AdoptionError(f"{_where(node)}: its input is not a [time, batch, features] tensor")
    first = k == 0 and x.kind == "features" and x.axes[2] == "F"
    if not first and not (x.kind == "seq" and x.layer == k - 1 and not x.read):
        raise AdoptionError(
            f"{_where(node)}: an LSTM is mapped on the graph's input (or its embedding) or on "
            f"the sequence of the LSTM before; this one reads a {x.kind} value"
        )
    expected = {"X0", "X1"} if first else {"T", "B"}
    if set(x.axes[:2]) != expected or x.axes[0] == "B" or x.axes[2] not in ("F", "DH"):
        raise AdoptionError(f"{_where(node)}: its input's axes {x.axes} are not [time, batch, _]")
    if first:
        walk.time_axis = x.axes[0]
    for i, part in ((5, "initial h"), (6, "initial c")):
        if given[i] is not None and not _is_zero(given[i]):
            raise AdoptionError(
                f"{_where(node)}: its {part} is not zeros (a state input is not mapped: "
                "lstm-serve carries state itself)"
            )
    lengths = given[4]
    if lengths is not None and lengths.kind not in ("seqlens", "shape"):
        raise AdoptionError(f"{_where(node)}: its sequence_lens is a {lengths.kind} value")
    if given[7] is not None and (given[7].kind != "const" or np.any(given[7].array)):
        raise AdoptionError(f"{_where(node)}: peephole weights (input P) are not mapped")
    walk.layers.append(_layer(node, given))
    if walk.layers[k].units != int(_attribute(node, "hidden_size", -1)):
        raise AdoptionError(f"{_where(node)}: hidden_size disagrees with its weights")
    if k > 0 and walk.layers[k].input_size != walk.layers[k - 1].units * walk.directions(k - 1):
        raise AdoptionError(f"{_where(node)}: its weights do not fit the LSTM before")
    state = ("D", "B", "H")
    return [Value("seq", ("T", "D", "B", "H"), k), Value("h", state, k), Value("c", state, k)]


def _layer(node: onnx.NodeProto, given: list[Value | None]) -> LstmLayer:
    """The LSTM node's weights and attributes as one of our layers, or a refusal."""
    direction = _attribute(node, "direction", "forward")
    if direction == "reverse":
        raise AdoptionError(
            f"{_where(node)}: a reverse-only LSTM is not mapped (lstm-serve's reverse layers "
            f"are Keras's go_backwards, whose sequence is in processing order); {INSTEAD}"
        )
    for name, default in (("clip", None), ("input_forget", 0)):
        if _attribute(node, name, default) != default:
            raise AdoptionError(f"{_where(node)}: the {name} attribute is not mapped")
    if _attribute(node, "activation_alpha") or _attribute(node, "activation_beta"):
        raise AdoptionError(f"{_where(node)}: activations with alpha/beta are not mapped")
    directions = 2 if direction == "bidirectional" else 1
    names = _attribute(node, "activations") or ["Sigmoid", "Tanh", "Tanh"] * directions
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    f, g, h = names[:3]
    if names != names[:3] * directions or g != h or not {f, g} <= set(LSTM_ACTIVATIONS):
        raise AdoptionError(
            f"{_where(node)}: activations {names} are not mapped (one gate activation and one "
            f"cell/output activation, of {', '.join(LSTM_ACTIVATIONS)}, the same each direction)"
        )
    W = _const(node, given[1], "W").astype(np.float32)
    R = _const(node, given[2], "R").astype(np.float32)
    bias = given[3] is not None
    units = R.shape[-1]
    B = (
        _const(node, given[3], "B").astype(np.float32)
        if bias
        else np.zeros((directions, 8 * units), np.float32)
    )
    if W.shape[0] != directions or R.shape != (directions, 4 * units, units):
        raise AdoptionError(f"{_where(node)}: W and R do not have ONNX's LSTM shapes")
    return LstmLayer(W, R, B, direction, Activation(f), Activation(g), bias)


def _embedding(node: onnx.NodeProto, walk: Walk, given: list[Value | None]) -> Value:
    tokens = given[1]
    assert tokens is not None
    table = _const(node, given[0], "table")
    if int(_attribute(node, "axis", 0)) != 0 or table.ndim != 2 or walk.embedding is not None:
        raise AdoptionError(f"{_where(node)}: one embedding, rows of a [vocabulary, width] table")
    walk.embedding = Embedding(table.astype(np.float32))
    return Value("features", (*tokens.axes, "F"))


# --- the head ------------------------------------------------------------------------------


def _gemm(node: onnx.NodeProto, walk: Walk, data: Value, given: list[Value | None]) -> list[Value]:
    if _attribute(node, "transA", 0) or given[0] is not data:
        raise AdoptionError(f"{_where(node)}: a Gemm on the data as A, not transposed, is mapped")
    weight = _const(node, given[1], "B").astype(np.float32)
    kernel = weight.T if _attribute(node, "transB", 0) else weight
    kernel = kernel * np.float32(_attribute(node, "alpha", 1.0))
    bias = None
    if len(given) > 2 and given[2] is not None:
        c = _const(node, given[2], "C").astype(np.float32) * np.float32(
            _attribute(node, "beta", 1.0)
        )
        bias = np.broadcast_to(c.reshape(-1) if c.size == kernel.shape[1] else c, kernel.shape[1:])
    return [_dense(node, walk, data, kernel, None if bias is None else np.array(bias))]


def _matmul(
    node: onnx.NodeProto, walk: Walk, data: Value, given: list[Value | None]
) -> list[Value]:
    if given[0] is not data:
        raise AdoptionError(f"{_where(node)}: a MatMul of the data by a constant is mapped")
    kernel = _const(node, given[1], "weight").astype(np.float32)
    if kernel.ndim != 2:
        raise AdoptionError(f"{_where(node)}: a MatMul by a [input, units] constant is mapped")
    return [_dense(node, walk, data, kernel, None)]


def _dense(
    node: onnx.NodeProto, walk: Walk, data: Value, kernel: np.ndarray, bias: np.ndarray | None
) -> Value:
    """The next Dense layer of the head, on what the last LSTM gave, or on the Dense before."""
    if data.kind == "dense":
        if data.layer != len(walk.dense) - 1:
            raise AdoptionError(f"{_where(node)}: the Dense layers must form one chain")
    elif walk.dense:
        raise AdoptionError(f"{_where(node)}: a second head is not mapped")
    else:
        walk.head_input = _head_input(node, walk, data)
    walk.dense.append(Dense(kernel, bias, "linear", f"dense_{len(walk.dense)}"))
    return Value("dense", (*data.axes[:-1], "U"), len(walk.dense) - 1)


def _head_input(node: onnx.NodeProto, walk: Walk, data: Value) -> str:
    last = len(walk.layers) - 1
    if data.layer == last and data.kind == "seq" and data.read and data.axes == ("B", "DH"):
        return data.read
    every_step = data.axes in (("B", "T", "DH"), ("T", "B", "DH"))
    if data.layer == last and data.kind == "seq" and not data.read and every_step:
        return "every-step"
    if data.layer == last and data.kind == "h" and data.axes == ("B", "DH"):
        return "final-states"
    what = f"layer {data.layer}'s {data.kind}" if data.layer >= 0 else data.kind
    raise AdoptionError(
        f"{_where(node)}: a Dense on {what} with axes {list(data.axes)} is not mapped (the last "
        "LSTM's last step, final states, mean or max over time, or every step, are; for a "
        "bidirectional LSTM, both directions)"
    )


def _add(node: onnx.NodeProto, walk: Walk, data: Value, given: list[Value | None]) -> list[Value]:
    other = given[1] if given[0] is data else given[0]
    last = walk.dense[-1] if walk.dense else None
    if data.kind != "dense" or last is None or last.bias is not None or last.activation != "linear":
        raise AdoptionError(f"{_where(node)}: an Add is mapped as a MatMul's bias")
    bias = _const(node, other, "bias").astype(np.float32)
    units = last.kernel.shape[1]
    if bias.size not in (1, units):
        raise AdoptionError(f"{_where(node)}: its bias does not fit {units} units")
    walk.dense[-1] = replace(last, bias=np.broadcast_to(bias.reshape(-1), (units,)).copy())
    return [data]


def _activation(
    node: onnx.NodeProto, walk: Walk, data: Value, given: list[Value | None]
) -> list[Value]:
    if data.kind != "dense" or walk.dense[-1].activation != "linear":
        raise AdoptionError(f"{_where(node)}: one activation after each Dense layer is mapped")
    if node.op_type == "Softmax":
        rank = len(data.axes)
        axis = int(_attribute(node, "axis", -1 if walk.opset >= 13 else 1)) % rank
        if axis != rank - 1 or (walk.opset < 13 and rank != 2):
            raise AdoptionError(f"{_where(node)}: a softmax over the last axis is mapped")
    walk.dense[-1] = replace(walk.dense[-1], activation=ACTIVATIONS[node.op_type])
    return [data]


HANDLERS = {
    "Identity": _pass,
    "Dropout": _pass,
    "Cast": _pass,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Reshape": _reshape,
    "Gather": _gather,
    "Slice": _slice,
    "Concat": _concat,
    "ReduceMean": _reduce,
    "ReduceMax": _reduce,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _add,
    **{op: _activation for op in ACTIVATIONS},
}


# --- outputs -----------------------------------------------------------------------------


def _output(name: str, walk: Walk) -> OutputMap:
    """Which output of ours holds what this output of the user's graph holds."""
    value = walk.values[name]
    last = len(walk.layers) - 1
    axes = tuple(a for a in value.axes if a != "1")
    directions = walk.directions(value.layer) if value.kind in ("seq", "h", "c") else 1
    if value.kind == "dense" and value.layer == len(walk.dense) - 1:
        ours = ("B", "T", "U") if "T" in axes else ("B", "U")
        return OutputMap(name, PREDICTION, value.axes, ours, 1)
    if value.kind == "seq" and value.layer == last and not value.read:
        return OutputMap(name, SEQUENCE, value.axes, ("B", "T", "DH"), directions)
    forward = walk.layers[last].direction == "forward"
    last_step = value.kind == "seq" and value.read == "last-step" and forward
    if (last_step or value.kind == "h") and value.layer == last and axes == ("B", "DH"):
        return OutputMap(name, LAST_HIDDEN, value.axes, ("B", "DH"), directions)
    if value.kind in ("h", "c"):
        ours_state = final_state(value.layer, value.kind)
        return OutputMap(name, ours_state, value.axes, ("D", "B", "H"), directions)
    what = f"layer {value.layer}'s {value.kind}" if value.layer >= 0 else value.kind
    raise AdoptionError(
        f"output {name} ({what}{', ' + value.read if value.read else ''}) is not mapped: "
        "outputs may be the head's prediction, the last LSTM's sequence or last step, and "
        "each LSTM's final states"
    )


def arrange(
    array: np.ndarray, have: tuple[str, ...], want: tuple[str, ...], directions: int
) -> np.ndarray:
    """`array`, labelled `have` (one of our outputs), laid out as `want` (the user's output):
    each step's output split into directions x units or merged, axes moved, size-1 axes added
    or dropped."""
    labels = list(have)
    if "DH" in labels:
        i = labels.index("DH")
        array = array.reshape((*array.shape[:i], directions, -1, *array.shape[i + 1 :]))
        labels[i : i + 1] = ["D", "H"]
    order = [labels.index(label) for label in _split(want)]
    array = array.transpose(order)
    shape, i = [], 0
    for label in want:
        if label == "1":
            shape.append(1)
        elif label == "DH":
            shape.append(array.shape[i] * array.shape[i + 1])
            i += 2
        else:
            shape.append(array.shape[i])
            i += 1
    return array.reshape(shape)


def _split(labels: tuple[str, ...]) -> list[str]:
    """The labels with DH split into D, H and size-1 axes left out."""
    return [
        p for label in labels if label != "1" for p in (("D", "H") if label == "DH" else (label,))
    ]
