"""`--weights`: a PyTorch state_dict read without unpickling code, mapped onto a StackedLSTM
of the widths its weights have, and refused where the file cannot say the forward (a head's
input and activation) until the flags state it."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch

from lstm_export.errors import ExportError
from lstm_export.model import StackedLSTM
from lstm_export.sniff import wrong_flag
from lstm_export.spec import HEAD_ACTIVATIONS
from lstm_export.torch_source import Layout, LayoutError, read_layout
from lstm_serving.contract import HEAD_INPUTS


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict, read without unpickling arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a pickled object
        raise ExportError(
            f"{path} holds pickled Python objects (a whole model saved with torch.save(model)?), "
            "which are never unpickled here: save the weights alone with "
            "torch.save(model.state_dict(), path)"
        ) from exc
    except Exception as exc:  # torch raises several unrelated types for unreadable files
        raise ExportError(f"cannot read weights file {path} as a state_dict: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(
            f"{path} holds a {type(state).__name__}, not a state_dict of tensors: "
            "save it with torch.save(model.state_dict(), path)"
        )
    return state


def module_from_weights(args: argparse.Namespace) -> StackedLSTM:
    """A StackedLSTM of the widths the weights have, loaded; lists every mismatch."""
    path = args.weights
    misrouted = wrong_flag(path, "--weights", ("torch",))
    if misrouted is not None:
        raise ExportError(misrouted)
    state = load_state(path)
    try:
        layout = read_layout(
            state, args.head, args.head_activation or "linear", args.head_input or "final-states"
        )
    except LayoutError as exc:
        raise ExportError(f"{path}: {exc}") from exc
    if layout.head is not None and (args.head_input is None or args.head_activation is None):
        raise ExportError(unstated_head(path, layout, args))
    units = args.layers or layout.units
    input_size = args.input_size or layout.input_size
    bidirectional = args.bidirectional or layout.bidirectional
    try:
        module = StackedLSTM(
            input_size, units, bidirectional, args.dropout, layout.head, layout.vocabulary
        )
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    renamed = {layout.renamed.get(k, k): v for k, v in state.items()}
    expected = module.state_dict()
    for k, lstm in enumerate(module.layers):  # nn.LSTM(bias=False): no bias keys at all
        names = [n for n in expected if n.startswith(f"layers.{k}.bias_")]
        if not any(n in renamed for n in names) and isinstance(lstm, torch.nn.LSTM):
            renamed.update({n: torch.zeros_like(expected[n]) for n in names})
    problems = [
        f"missing key {k} (expected shape {list(v.shape)})"
        for k, v in expected.items()
        if k not in renamed
    ]
    problems += [
        f"unexpected key {k} (shape {list(v.shape)})"
        for k, v in renamed.items()
        if k not in expected
    ]
    problems += [
        f"{k}: shape {list(renamed[k].shape)} in the file, {list(v.shape)} for the declared layers"
        for k, v in expected.items()
        if k in renamed and renamed[k].shape != v.shape
    ]
    if problems:
        raise ExportError(
            f"{path} does not match --input-size {input_size} --layers "
            + " ".join(map(str, units))
            + (" --bidirectional" if bidirectional else "")
            + ":\n  "
            + "\n  ".join(problems)
            + "\n(the layers are read from the weights: "
            + ", ".join(f"{n} -> {m}" for n, m in list(layout.renamed.items())[:6])
            + (", ..." if len(layout.renamed) > 6 else "")
            + ")"
        )
    module.load_state_dict({k: v.float() for k, v in renamed.items()})
    return module


def unstated_head(path: Path, layout: Layout, args: argparse.Namespace) -> str:
    """Why a state_dict with a head is refused until its forward is stated, and the choices
    as the PyTorch code each stands for."""
    fc = layout.head_prefix.rstrip(".") or "fc"
    width = (2 if layout.bidirectional else 1) * layout.units[-1]
    assert layout.head is not None
    missing = [
        flag
        for flag, value in (("--head-input", args.head_input), ("--head-activation",
                                                                  args.head_activation))
        if value is None
    ]  # fmt: skip
    choices = [
        f"  --head-input {name:<13} y = {fc}({code})"
        + ("   (bidirectional: cat(h_n[-2], h_n[-1]))" if name == "final-states" else "")
        for name, code in HEAD_INPUTS.items()
    ]
    return "\n".join(
        [
            f"{path}: a Linear head ({layout.head_prefix}weight, {width} -> {layout.head.units}) "
            "follows the LSTMs, and a state_dict holds weights, not the forward: these readings "
            "of it answer differently, so state yours (missing: " + ", ".join(missing) + "),",
            "where out, (h_n, c_n) = lstm(x):",
            *choices,
            f"  --head-activation {'|'.join(HEAD_ACTIVATIONS)}   what follows {fc}(...), e.g. "
            f"sigmoid for torch.sigmoid({fc}(...))",
            "Or export the forward itself: torch.export.save(torch.export.export(model.eval(), "
            "(x,)), 'model.pt2'), then --torch model.pt2 (also for several Linear layers).",
        ]
    )
