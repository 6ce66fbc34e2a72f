"""A PyTorch program saved with `torch.export.save` (.pt2) -> a ModelSpec: the user's forward,
read from the graph the program holds, never guessed.

Mapped: `nn.Embedding` in front (token ids in), `nn.LSTM` (`aten.lstm.input`: layers,
bidirectional, batch_first; zero initial state), several LSTM modules in a row, dropout
between them; what the head reads of the last one (`out[:, -1]`, `h_n[-1]`,
`cat(h_n[-2], h_n[-1])`, `out.mean(1)`, `out.max(1).values`, `out`); any stack of Linear
layers with ReLU, Tanh, Sigmoid or Softmax after each. Any other op is refused, naming it and
where it sits in the forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lstm_export.spec import Dense, Embedding, Head, LstmLayer, ModelSpec
from lstm_export.torch_source import onnx_gates


class ProgramError(Exception):
    """A program this reader cannot map; the message names the op and what to do."""


ACTIVATIONS = {
    "aten.relu.default": "relu",
    "aten.tanh.default": "tanh",
    "aten.sigmoid.default": "sigmoid",
    "aten.softmax.int": "softmax",
    "aten._softmax.default": "softmax",
}
IDENTITY = {"aten.dropout.default", "aten.clone.default", "aten.contiguous.default"}


@dataclass
class Program:
    """What the reader found: the spec, and how to run the program as the user saved it."""

    spec: ModelSpec
    module: torch.nn.Module  # ep.module(): the program itself
    example_shape: tuple[int, ...]  # the shape it was traced at (torch.export specializes it)
    time_major: bool  # nn.LSTM(batch_first=False): the program takes [time, batch, features]


@dataclass
class Walk:
    """The forward as read so far: each node's meaning, the LSTM layers, the head's layers."""

    values: dict[str, Any] = field(default_factory=dict)
    layers: list[LstmLayer] = field(default_factory=list)
    dense: list[Dense] = field(default_factory=list)
    embedding: Embedding | None = None
    head_input: str | None = None
    time_major: bool | None = None
    bidirectional: bool = False


def read_program(path: Path) -> Program:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch raises several types for files it cannot read
        raise ProgramError(f"cannot load it as a torch.export program: {exc}") from exc
    signature = program.graph_signature
    weights = {**program.state_dict, **program.constants}
    parameters = {
        **signature.inputs_to_parameters,
        **signature.inputs_to_buffers,
        **getattr(signature, "inputs_to_lifted_tensor_constants", {}),
    }
    walk = Walk()
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name not in parameters]
    if len(inputs) != 1:
        names = ", ".join(n.name for n in inputs)
        raise ProgramError(f"the forward takes {len(inputs)} inputs ({names}): one is read")
    example = inputs[0].meta.get("val")
    for node in program.graph.nodes:
        if node.op == "placeholder":
            name = parameters.get(node.name)
            walk.values[node.name] = ("argument",) if name is None else ("weight", weights[name])
        elif node.op == "call_function":
            walk.values[node.name] = call_meaning(node, walk)
        elif node.op == "output":
            check_output(node, walk)
    spec = spec_of_walk(walk, f"torch.export program {path.name}")
    shape = tuple(int(d) for d in example.shape) if example is not None else ()
    return Program(spec, program.module(), shape, bool(walk.time_major))


def spec_of_walk(walk: Walk, source: str) -> ModelSpec:
    """The model spec of a forward read to its end."""
    if not walk.layers:
        raise ProgramError("the forward has no nn.LSTM")
    head = None
    if walk.dense:
        *hidden, last = walk.dense
        assert walk.head_input is not None
        head = Head(
            last.kernel, last.bias, last.activation, walk.head_input, tuple(hidden), last.name
        )
    return ModelSpec(walk.layers, head, source=source, embedding=walk.embedding)


def _where(node: Any) -> str:
    """The op and the line of the user's forward it came from, when torch kept it."""
    trace = node.meta.get("stack_trace") or ""
    line = [part.strip() for part in trace.strip().splitlines() if part.strip()][-1:]
    return f"{node.target} ({node.name}" + (f": {line[0]}" if line else "") + ")"


def call_meaning(node: Any, walk: Walk) -> Any:
    """What one call in the forward means, or a refusal naming it."""
    target, args = str(node.target), node.args
    value = [walk.values.get(a.name) if hasattr(a, "name") else a for a in args]
    if target == "aten.zeros.default":
        return ("zeros",)
    if target == "aten.lstm.input":
        return _lstm(node, walk, value)
    if target == "aten.embedding.default" and value[1] == ("argument",) and not walk.layers:
        weight: Any = value[0]  # ("weight", the table)
        table = weight[1].detach().cpu().numpy().astype(np.float32)
        padding = args[2] if len(args) > 2 else -1
        walk.embedding = Embedding(table, None if padding < 0 else int(padding))
        return ("embedded",)
    if target == "<built-in function getitem>":
        source, index = value[0], args[1]
        if source and source[0] == "lstm":
            return (("seq", "h_n", "c_n")[index],)
        if source and source[0] == "max_result":  # (values, indices): only values may be read
            return ("read", "max") if index == 0 else ("indices",)
        raise ProgramError(f"{_where(node)} is not mapped")
    if target in IDENTITY and value[0] and value[0][0] in ("seq", "read"):
        return value[0]
    time = 0 if walk.time_major else 1  # where the steps are in the LSTM's output
    if target == "aten.select.int":
        return _select(node, value, args, time)
    if target == "aten.cat.default":
        parts = [walk.values.get(a.name) for a in args[0]]
        dim = args[1] if len(args) > 1 else 0
        if parts == [("h", -2), ("h", -1)] and dim in (1, -1) and walk.bidirectional:
            return ("read", "final-states")
        raise ProgramError(f"{_where(node)}: only cat((h_n[-2], h_n[-1]), 1) is mapped")
    over_time = ([time], [time - 3])  # the step axis of a rank-3 output, counted either way
    if target == "aten.mean.dim" and value[0] == ("seq",) and list(args[1]) in over_time:
        return ("read", "mean")
    if target == "aten.max.dim" and value[0] == ("seq",) and [args[1]] in over_time:
        return ("max_result",)
    if target == "aten.amax.default" and value[0] == ("seq",) and list(args[1]) in over_time:
        return ("read", "max")
    if target == "aten.linear.default":
        return _linear(node, walk, value, args)
    if target in ACTIVATIONS and value[0] == ("dense",) and walk.dense:
        if walk.dense[-1].activation != "linear":
            raise ProgramError(f"{_where(node)}: one activation after each Linear is mapped")
        val = node.meta.get("val")  # what torch.export traced; TorchScript has no such record
        rank = len(val.shape) if val is not None else 0
        if ACTIVATIONS[target] == "softmax" and args[1] not in (-1, rank - 1):
            raise ProgramError(f"{_where(node)}: softmax over the last dimension is mapped")
        last = walk.dense[-1]
        walk.dense[-1] = Dense(last.kernel, last.bias, ACTIVATIONS[target], last.name)
        return ("dense",)
    raise ProgramError(
        f"{_where(node)} is not mapped: the forward may hold nn.LSTM, dropout, the head's "
        "input (out[:, -1], h_n[-1], cat(h_n[-2], h_n[-1]), out.mean(1), out.max(1).values, "
        "out) and Linear layers with ReLU, Tanh, Sigmoid or Softmax"
    )


def _lstm(node: Any, walk: Walk, value: list[Any]) -> tuple[str]:
    source, hx, params = value[0], value[1], node.args[2]
    has_biases, num_layers, _, train, bidirectional, batch_first = node.args[3:9]
    if walk.dense or walk.head_input is not None:
        raise ProgramError(f"{_where(node)}: an LSTM after the head is not mapped")
    first = ("embedded",) if walk.embedding is not None else ("argument",)
    if source not in (first, ("seq",)) or (source == first and walk.layers):
        raise ProgramError(f"{_where(node)}: an LSTM is mapped on the input or the one before")
    if any(walk.values.get(h.name) != ("zeros",) for h in hx):
        raise ProgramError(f"{_where(node)}: an initial state other than zeros is not mapped")
    if train:
        raise ProgramError(f"{_where(node)}: the program was exported in training mode (.eval())")
    if walk.time_major is not None and walk.time_major != (not batch_first):
        raise ProgramError(f"{_where(node)}: LSTMs that disagree on batch_first")
    walk.time_major, walk.bidirectional = not batch_first, bool(bidirectional)
    arrays = [walk.values[p.name][1].detach().cpu().numpy().astype(np.float32) for p in params]
    per_direction = 4 if has_biases else 2
    directions = 2 if bidirectional else 1
    for layer in range(num_layers):
        w, r, b = [], [], []
        for direction in range(directions):
            start = (layer * directions + direction) * per_direction
            got = arrays[start : start + per_direction]
            units = got[1].shape[1]
            if got[0].shape[0] != 4 * units:
                raise ProgramError(f"{_where(node)}: proj_size or a non-LSTM cell is not mapped")
            biases = got[2:] if has_biases else [np.zeros(4 * units, np.float32)] * 2
            w.append(onnx_gates(got[0]))
            r.append(onnx_gates(got[1]))
            b.append(np.concatenate([onnx_gates(biases[0]), onnx_gates(biases[1])]))
        direction_name = "bidirectional" if bidirectional else "forward"
        walk.layers.append(LstmLayer(np.stack(w), np.stack(r), np.stack(b), direction_name))
    return ("lstm",)


def _select(node: Any, value: list[Any], args: tuple[Any, ...], time: int) -> tuple[Any, ...]:
    source, dim, index = value[0], args[1], args[2]
    if source == ("seq",) and dim == time and index == -1:
        return ("read", "last-step")
    if source == ("h_n",) and dim == 0 and index in (-1, -2):
        return ("h", index)
    last = "out[-1] (batch_first=False)" if time == 0 else "out[:, -1]"
    raise ProgramError(f"{_where(node)}: {last}, h_n[-1] and h_n[-2] are the selections mapped")


def _linear(node: Any, walk: Walk, value: list[Any], args: tuple[Any, ...]) -> tuple[str]:
    source: tuple[Any, ...] = value[0] or ()
    if not walk.dense:
        if source == ("seq",):
            walk.head_input = "every-step"
        elif source == ("h", -1) and not walk.bidirectional:
            walk.head_input = "final-states"
        elif source and source[0] == "read":
            walk.head_input = source[1]
        else:
            raise ProgramError(
                f"{_where(node)}: a Linear on {source[0] if source else 'this'} is not mapped "
                "(for a bidirectional LSTM, h_n[-1] is the backward direction alone)"
            )
    elif source != ("dense",):
        raise ProgramError(f"{_where(node)}: the Linear layers must form one chain")
    name = str(args[1].name).removeprefix("p_").removesuffix("_weight")
    weight = value[1][1].detach().cpu().numpy().astype(np.float32)
    bias_given = value[2] if len(value) > 2 else None
    bias = None if bias_given is None else bias_given[1].detach().cpu().numpy().astype(np.float32)
    walk.dense.append(Dense(weight.T, bias, "linear", name))
    return ("dense",)


def check_output(node: Any, walk: Walk) -> None:
    results = node.args[0]
    if len(results) != 1:
        raise ProgramError(f"the forward returns {len(results)} values: one is mapped")
    meaning = walk.values.get(results[0].name)
    if walk.dense and meaning == ("dense",):
        return
    raise ProgramError(
        f"the forward returns {results[0].name} ({(meaning or ('?',))[0]}): a Linear head's "
        "output is mapped (a program returning the LSTM's own output: export its "
        "state_dict with --weights)"
    )
