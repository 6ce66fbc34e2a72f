"""`lstm-export`: a stacked LSTM from PyTorch (our StackedLSTM, random or from a state_dict of
the usual layouts) or from a Keras file, written as a verified ONNX model.

Writes DIR/NAME/VERSION/model.onnx only after the model passes verification against its
source's own semantics.
Exit status: 0 written, 1 failed (bad weights, verification, existing version), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
from pathlib import Path

import onnx
import torch

from lstm_export.keras_source import KerasError, read_keras, weights_of
from lstm_export.model import StackedLSTM
from lstm_export.onnx_graph import architecture_of, graph_of, recorded_architecture
from lstm_export.sniff import wrong_flag
from lstm_export.spec import HEAD_ACTIVATIONS, sha256_of
from lstm_export.torch_source import Layout, LayoutError, build_model, read_layout
from lstm_export.verify import TOLERANCE, Reference, torch_reference, verify_against
from lstm_serving.contract import HEAD_INPUTS


class ExportError(Exception):
    """A failure the user can fix; its message says how."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="lstm-export",
        description="Export a stacked LSTM (PyTorch or Keras) to a verified ONNX model in a "
        "model repository.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--keras", type=Path, help="a Keras model file, .keras or .h5 (read without TensorFlow)"
    )
    source.add_argument(
        "--weights",
        type=Path,
        help="a PyTorch state_dict (torch.save(model.state_dict(), path)): our StackedLSTM, a "
        "plain nn.LSTM, LSTMs under any prefix, and a trailing nn.Linear head",
    )
    p.add_argument(
        "--input-size", type=int, help="features per step (with --weights: checked against them)"
    )
    p.add_argument(
        "--layers",
        type=int,
        nargs="+",
        metavar="UNITS",
        help="units of each LSTM layer, first to last (e.g. 64 32); with --weights: a check",
    )
    p.add_argument("--bidirectional", action="store_true", help="every layer bidirectional")
    p.add_argument(
        "--dropout", type=float, default=0.0, help="dropout between layers (training only)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for random weights")
    p.add_argument(
        "--head", metavar="PREFIX", help="with --weights: the Linear head's key prefix (e.g. fc.)"
    )
    p.add_argument(
        "--head-input",
        choices=tuple(HEAD_INPUTS),
        help="with --weights and a Linear head: what your forward feeds it, where out, (h_n, "
        "c_n) = lstm(x): " + ", ".join(f"{name} = {code}" for name, code in HEAD_INPUTS.items()),
    )
    p.add_argument(
        "--head-activation",
        choices=tuple(HEAD_ACTIVATIONS),
        help="with --weights and a Linear head: what your forward applies after it",
    )
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--version", type=int, help="version number (default: next free, from 1)")
    p.add_argument("--repository", type=Path, required=True, help="model repository directory")
    p.add_argument("--force", action="store_true", help="overwrite an existing version")
    args = p.parse_args(argv)
    if args.version is not None and args.version < 1:
        p.error("--version must be >= 1")
    if "/" in args.name or args.name in ("", ".", ".."):
        p.error(f"--name {args.name!r} is not a valid directory name")
    for flag, path in (("--weights", args.weights), ("--keras", args.keras)):
        if path is not None and not path.is_file():
            p.error(f"{flag} {path}: no such file")
    if args.weights is None and args.keras is None and (not args.layers or not args.input_size):
        p.error("--input-size and --layers are required without --weights or --keras")
    return args


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
        module = StackedLSTM(input_size, units, bidirectional, args.dropout, layout.head)
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
            "A forward of another shape (several Linear layers, an Embedding) cannot be read "
            "from a state_dict.",
        ]
    )


def target_path(repository: Path, name: str, version: int | None, force: bool) -> Path:
    model_dir = repository / name
    if version is None:
        taken = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
        version = max(taken, default=0) + 1
    path = model_dir / str(version) / "model.onnx"
    if path.exists() and not force:
        raise ExportError(f"{path} already exists: pass --force to overwrite, or another --version")
    return path


def write_atomically(model: onnx.ModelProto, path: Path) -> None:
    """A server polling the repository never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".model-", suffix=".onnx.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a server running as another user must read it
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run(args: argparse.Namespace) -> Path:
    if args.keras is not None:
        misrouted = wrong_flag(args.keras, "--keras", ("keras", "keras-h5"))
        if misrouted is not None:
            raise ExportError(misrouted)
        try:
            spec, reference = read_keras(args.keras)
        except KerasError as exc:
            raise ExportError(f"{args.keras}: {exc}") from exc
        arch = architecture_of(spec, sha256_of(weights_of(spec)))
        model = graph_of(spec, arch)
        check: Reference = reference
        for note in spec.notes:
            print(f"note: {note}")
    else:
        if args.weights is not None:
            module = module_from_weights(args)
        else:
            try:
                torch.manual_seed(args.seed)
                module = StackedLSTM(args.input_size, args.layers, args.bidirectional, args.dropout)
            except ValueError as exc:
                raise ExportError(str(exc)) from exc
        module.eval()
        model, check = build_model(module), torch_reference(module)
        arch = recorded_architecture(model)
    path = target_path(args.repository, args.name, args.version, args.force)
    print(arch.summary())
    print(f"\nVerifying against the source (tolerance {TOLERANCE:g} absolute) ...", flush=True)
    try:
        report = verify_against(model, check, arch)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the ONNX checker rejected the graph: {exc}") from exc
    worst = report.worst()
    status = "passed" if report.passed else "FAILED"
    print(
        f"Verification {status}: {len(report.cases)} cases, max abs difference "
        f"{report.max_abs_diff:.3g} (worst: {worst.name})"
    )
    if not report.passed:
        raise ExportError("verification failed: no model written")
    write_atomically(model, path)
    print(f"Wrote {path} ({path.stat().st_size:,} bytes)")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except ExportError as exc:
        print(f"lstm-export: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
