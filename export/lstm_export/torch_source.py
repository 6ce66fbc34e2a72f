"""PyTorch models in: our StackedLSTM, and the state_dicts people have.

A state_dict may hold a plain `nn.LSTM(num_layers=N, bidirectional=...)` (`weight_ih_l{k}`...),
LSTMs under any prefix (`lstm.`, `encoder.`, `lstm1.` then `lstm2.`, in the file's order), and
a trailing `nn.Linear` head; it is read into a StackedLSTM of the widths the weights have.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from lstm_export.model import HeadConfig, StackedLSTM
from lstm_export.onnx_graph import architecture_of, graph_of
from lstm_export.spec import Embedding, Head, LstmLayer, ModelSpec

# PyTorch stores gate blocks as i, f, g, o; ONNX wants i, o, f, c (c is PyTorch's g).
_TORCH_TO_ONNX_GATES = (0, 3, 1, 2)
_LSTM_KEY = re.compile(
    r"^(?P<prefix>(?:.*\.)?)(?P<param>weight_ih|weight_hh|bias_ih|bias_hh)_l(?P<layer>\d+)"
    r"(?P<reverse>_reverse)?$"
)


class LayoutError(Exception):
    """A state_dict this reader cannot map; the message lists what is wrong and what to do."""


def onnx_gates(weight: np.ndarray) -> np.ndarray:
    """Reorders the 4 gate blocks along axis 0 from PyTorch's (and Keras's) order to ONNX's."""
    blocks = np.split(weight, 4, axis=0)
    return np.concatenate([blocks[i] for i in _TORCH_TO_ONNX_GATES], axis=0)


def layer_of(lstm: torch.nn.LSTM) -> LstmLayer:
    """One single-layer nn.LSTM in ONNX's layout: W, R and B = [W_b, R_b], per direction."""
    suffixes = ["_l0", "_l0_reverse"] if lstm.bidirectional else ["_l0"]
    w, r, b = [], [], []
    for sfx in suffixes:
        params = {
            name: getattr(lstm, name + sfx).detach().cpu().numpy().astype(np.float32)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        }
        w.append(onnx_gates(params["weight_ih"]))
        r.append(onnx_gates(params["weight_hh"]))
        b.append(np.concatenate([onnx_gates(params["bias_ih"]), onnx_gates(params["bias_hh"])]))
    direction = "bidirectional" if lstm.bidirectional else "forward"
    return LstmLayer(np.stack(w), np.stack(r), np.stack(b), direction)


def spec_of(module: StackedLSTM) -> ModelSpec:
    head = None
    if module.head is not None and module.head_config is not None:
        bias = module.head.bias
        head = Head(
            kernel=module.head.weight.detach().numpy().T.astype(np.float32),
            bias=None if bias is None else bias.detach().numpy().astype(np.float32),
            activation=module.head_config.activation,
            input=module.head_config.input,
        )
    layers = [layer_of(lstm) for lstm in module.layers if isinstance(lstm, torch.nn.LSTM)]
    embedding = None
    if module.embedding is not None:
        embedding = Embedding(module.embedding.weight.detach().numpy().astype(np.float32))
    return ModelSpec(layers, head, embedding=embedding)


def weights_sha256(module: StackedLSTM) -> str:
    """A hash of every parameter, in state_dict order, to tie a model file to its weights."""
    return sha256_of_state(module.state_dict())


def sha256_of_state(state: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().astype(np.float32).tobytes())
    return digest.hexdigest()


def build_model(module: StackedLSTM) -> onnx.ModelProto:
    """The verified-to-be ONNX model of a StackedLSTM (see verify), architecture recorded."""
    spec = spec_of(module)
    return graph_of(spec, architecture_of(spec, weights_sha256(module), torch.__version__))


@dataclass
class Layout:
    """How a state_dict maps onto a StackedLSTM: widths, and each of its keys' new name."""

    input_size: int
    units: list[int]
    bidirectional: bool
    renamed: dict[str, str] = field(default_factory=dict)  # file key -> StackedLSTM key
    head: HeadConfig | None = None
    head_prefix: str = ""  # the head's key prefix in the file (e.g. "fc.")
    vocabulary: int = 0  # > 0: an nn.Embedding in front (token ids in)
    unknown: list[str] = field(default_factory=list)  # keys that are neither LSTM nor head


def read_layout(
    state: Mapping[str, torch.Tensor],
    head_prefix: str | None = None,
    head_activation: str = "linear",
    head_input: str = "final-states",
) -> Layout:
    """Finds the LSTM layers (by prefix, in the file's order) and a trailing Linear head, which
    reads and applies what the caller says (a state_dict cannot say it)."""
    lstm_layers: dict[tuple[str, int], dict[str, str]] = {}  # (prefix, layer) -> param key
    reverse = False
    for key in state:
        found = _LSTM_KEY.match(key)
        if found is None:
            continue
        reverse |= found["reverse"] is not None
        slot = (found["prefix"], int(found["layer"]))
        lstm_layers.setdefault(slot, {})[found["param"] + (found["reverse"] or "")] = key
    if not lstm_layers:
        raise LayoutError(
            "no LSTM weights found: expected keys like weight_ih_l0 (an nn.LSTM's state_dict, "
            f"under any prefix); the file has {', '.join(list(state)[:8])}"
        )
    projections = [key for key in state if re.search(r"weight_hr_l\d+(_reverse)?$", key)]
    if projections:
        raise LayoutError(
            f"{projections[0]}: an nn.LSTM with proj_size (projected hidden states), which "
            "lstm-serving does not serve: the ONNX LSTM operator has no projection"
        )
    for params in lstm_layers.values():
        _check_lstm_gates(state, params)
    prefixes = list(dict.fromkeys(prefix for prefix, _ in lstm_layers))
    ordered = sorted(lstm_layers, key=lambda s: (prefixes.index(s[0]), s[1]))
    units, renamed = [], {}
    for k, slot in enumerate(ordered):
        params = lstm_layers[slot]
        if "weight_hh" not in params or "weight_ih" not in params:
            raise LayoutError(f"layer {slot[0]}l{slot[1]} lacks weight_ih or weight_hh")
        units.append(int(state[params["weight_hh"]].shape[1]))
        for param, key in params.items():
            name = param.removesuffix("_reverse")
            renamed[key] = f"layers.{k}.{name}_l0" + param.removeprefix(name)
    first = lstm_layers[ordered[0]]["weight_ih"]
    layout = Layout(int(state[first].shape[1]), units, reverse, renamed)
    rest = [key for key in state if key not in renamed]
    tables = [k for k in rest if "embed" in k.lower() and state[k].ndim == 2]
    if len(tables) > 1 or (tables and state[tables[0]].shape[1] != layout.input_size):
        shown = ", ".join(f"{k} {list(state[k].shape)}" for k in tables)
        raise LayoutError(
            f"{shown}: one nn.Embedding of rows as wide as the first LSTM's input "
            f"({layout.input_size}) is read in front of the LSTMs; export another forward as "
            "a program, torch.export.save(torch.export.export(model.eval(), (ids,)), "
            "'model.pt2'), with --torch"
        )
    if tables:  # ids -> embedding -> LSTMs: the one way a table in front can be read
        layout.vocabulary = int(state[tables[0]].shape[0])
        layout.renamed[tables[0]] = "embedding.weight"
        rest.remove(tables[0])
    layout.head, head_keys = _head(state, rest, layout, head_prefix, head_activation, head_input)
    layout.unknown = [key for key in rest if key not in head_keys]
    return layout


def _check_lstm_gates(state: Mapping[str, torch.Tensor], params: dict[str, str]) -> None:
    """An LSTM has 4 gate blocks; a GRU (3) or a plain RNN (1) saves keys of the same names."""
    if "weight_ih" not in params or "weight_hh" not in params:
        return  # said with the layer's name below
    key = params["weight_ih"]
    rows, units = int(state[key].shape[0]), int(state[params["weight_hh"]].shape[1])
    recurrent = {3 * units: "an nn.GRU (3 gate blocks)", units: "an nn.RNN (no gates)"}
    if rows != 4 * units:
        what = recurrent.get(rows, f"{rows} rows for {units} units, not an LSTM's 4 gate blocks")
        raise LayoutError(
            f"{key} has shape {list(state[key].shape)}: {what}; lstm-serving serves LSTMs only"
        )


def _head(
    state: Mapping[str, torch.Tensor],
    keys: list[str],
    layout: Layout,
    prefix: str | None,
    activation: str,
    head_input: str,
) -> tuple[HeadConfig | None, list[str]]:
    """The one Linear (prefix.weight [out, in] and optional prefix.bias) fed by the stack."""
    width = (2 if layout.bidirectional else 1) * layout.units[-1]
    candidates = [
        key.removesuffix("weight")
        for key in keys
        if key.endswith("weight") and state[key].ndim == 2 and state[key].shape[1] == width
    ]
    if prefix is not None:
        if prefix + "weight" not in state:
            raise LayoutError(f"--head {prefix!r}: no key {prefix}weight in the file")
        candidates = [prefix]
    if not candidates:
        return None, []
    if len(candidates) > 1:
        raise LayoutError(
            f"several Linear layers could be the head ({', '.join(candidates)}): name it with "
            "--head PREFIX (e.g. --head fc.)"
        )
    (found,) = candidates
    weight = state[found + "weight"]
    has_bias = found + "bias" in state
    layout.renamed[found + "weight"] = "head.weight"
    if has_bias:
        layout.renamed[found + "bias"] = "head.bias"
    layout.head_prefix = found
    config = HeadConfig(int(weight.shape[0]), activation, head_input, has_bias)
    return config, [found + "weight", found + "bias"]
