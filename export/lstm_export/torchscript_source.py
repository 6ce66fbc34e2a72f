"""A TorchScript archive (`torch.jit.save`) -> a ModelSpec: the user's forward, read from the
archive's graph.

The graph's ops are read as the torch.export reader reads a program's (`program_source`), so
both map the same forwards and refuse the same way. Traced modules (`torch.jit.trace`) hold a
straight-line graph; a scripted module's control flow (`prim::If`, `prim::Loop`) is refused,
naming it: save such a model with `torch.jit.trace` or `torch.export`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lstm_export.program_source import (
    Program,
    ProgramError,
    Walk,
    call_meaning,
    check_output,
    spec_of_walk,
)

# TorchScript's op names -> the torch.export names `program_source` reads
OPS = {
    "aten::zeros": "aten.zeros.default",
    "aten::lstm": "aten.lstm.input",
    "aten::select": "aten.select.int",
    "aten::linear": "aten.linear.default",
    "aten::relu": "aten.relu.default",
    "aten::tanh": "aten.tanh.default",
    "aten::sigmoid": "aten.sigmoid.default",
    "aten::softmax": "aten.softmax.int",
    "aten::mean": "aten.mean.dim",
    "aten::max": "aten.max.dim",
    "aten::amax": "aten.amax.default",
    "aten::cat": "aten.cat.default",
    "aten::embedding": "aten.embedding.default",
    "aten::dropout": "aten.dropout.default",
    "aten::contiguous": "aten.contiguous.default",
}
IGNORED = {"aten::size"}  # the batch size read to build the zero initial state


@dataclass
class _Ref:
    """A value of the graph, as `program_source` refers to one (by its name)."""

    name: str


@dataclass
class _Node:
    """A TorchScript node dressed as the torch.export node `program_source._call` reads."""

    target: str
    args: tuple[Any, ...]
    name: str
    meta: dict[str, Any] = field(default_factory=dict)


def read_torchscript(path: Path) -> Program:
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
    except Exception as exc:  # torch raises several types for files it cannot read
        raise ProgramError(f"cannot load it as a TorchScript archive: {exc}") from exc
    graph = module.inlined_graph
    flow = [n.kind() for n in graph.nodes() if n.kind() in ("prim::If", "prim::Loop")]
    if flow:
        raise ProgramError(
            f"a scripted module: its graph has control flow ({flow[0]}), which is not read; "
            "save the model with torch.jit.trace or torch.export"
        )
    walk = Walk()
    objects: dict[str, Any] = {}  # module values (self, submodules) by name
    constants: dict[str, Any] = {}
    lists: dict[str, list[Any]] = {}
    self_value, *arguments = list(graph.inputs())
    if len(arguments) != 1:
        raise ProgramError(f"the forward takes {len(arguments)} inputs: one is read")
    objects[self_value.debugName()] = module
    walk.values[arguments[0].debugName()] = ("argument",)

    def arg(value: Any) -> Any:
        name = value.debugName()
        if name in constants:
            return constants[name]
        if name in lists:
            return lists[name]
        return _Ref(name)

    for node in graph.nodes():
        kind, outputs = node.kind(), [o.debugName() for o in node.outputs()]
        where = {"stack_trace": str(node.sourceRange()).strip().split("\n")[0]}  # File, line
        if kind == "prim::Constant":
            constants[outputs[0]] = node.output().toIValue()
        elif kind == "prim::GetAttr":
            owner = objects[node.input().debugName()]
            attribute = getattr(owner, node.s("name"))
            if isinstance(attribute, torch.Tensor):
                walk.values[outputs[0]] = ("weight", attribute)
            else:
                objects[outputs[0]] = attribute
        elif kind == "prim::ListConstruct":
            lists[outputs[0]] = [arg(v) for v in node.inputs()]
        elif kind in IGNORED:
            continue
        elif kind == "aten::slice":  # x[:, ...]: a full slice is the value itself
            sliced = [arg(v) for v in node.inputs()]
            full = sliced[2] in (0, None) and (sliced[3] is None or sliced[3] >= 2**62)
            full = full and sliced[4] == 1
            source = walk.values.get(sliced[0].name) if isinstance(sliced[0], _Ref) else None
            if not full or source is None:
                raise ProgramError(f"{kind} ({where['stack_trace']}) is not mapped")
            walk.values[outputs[0]] = source
        elif kind in OPS:
            args = tuple(arg(v) for v in node.inputs())
            if kind == "aten::linear":  # the layer named as its module is: fc, not weight.1
                named = _Ref(_module_of(node) + "_weight")
                walk.values[named.name] = walk.values[args[1].name]
                args = (args[0], named, *args[2:])
            meaning = call_meaning(_Node(OPS[kind], args, outputs[0], where), walk)
            _assign(kind, meaning, outputs, walk)
        else:
            raise ProgramError(f"{kind} ({where['stack_trace'] or 'in the forward'}) is not mapped")
    returned = [o.debugName() for o in graph.outputs()]
    check_output(_Node("output", ([_Ref(name) for name in returned],), "output"), walk)
    spec = spec_of_walk(walk, f"TorchScript archive {path.name}")
    return Program(spec, module, (), bool(walk.time_major))


def _module_of(linear: Any) -> str:
    """The name of the module a Linear's weight was read from (`fc` of `fc.1`)."""
    producer = list(linear.inputs())[1].node()
    owner = producer.input().debugName() if producer.kind() == "prim::GetAttr" else "fc"
    return str(owner).split(".")[0]


def _assign(kind: str, meaning: Any, outputs: list[str], walk: Walk) -> None:
    """Each output's meaning: TorchScript gives a node's outputs at once, where torch.export
    takes them apart with getitem."""
    if kind == "aten::lstm":
        for name, part in zip(outputs, ("seq", "h_n", "c_n"), strict=True):
            walk.values[name] = (part,)
    elif kind == "aten::max" and meaning == ("max_result",):
        walk.values[outputs[0]], walk.values[outputs[1]] = ("read", "max"), ("indices",)
    else:
        walk.values[outputs[0]] = meaning
