"""`lstm-export`: build or load a stacked LSTM, write it as a verified ONNX model.

Writes DIR/NAME/VERSION/model.onnx only after the model passes verification.
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

from lstm_serving.export.model import StackedLSTM
from lstm_serving.export.onnx_graph import architecture_of, build_model
from lstm_serving.export.verify import TOLERANCE, verify


class ExportError(Exception):
    """A failure the user can fix; its message says how."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="lstm-export",
        description="Export a stacked LSTM to a verified ONNX model in a model repository.",
    )
    p.add_argument("--input-size", type=int, required=True, help="features per time step")
    p.add_argument(
        "--layers",
        type=int,
        nargs="+",
        required=True,
        metavar="UNITS",
        help="units of each LSTM layer, first to last (e.g. 64 32)",
    )
    p.add_argument("--bidirectional", action="store_true", help="every layer bidirectional")
    p.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="dropout between layers (training only; recorded, not exported)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")
    p.add_argument(
        "--weights",
        type=Path,
        help="state_dict saved with torch.save(model.state_dict()); random if absent",
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
    if args.weights is not None and not args.weights.is_file():
        p.error(f"--weights {args.weights}: no such file")
    return args


def load_weights(module: StackedLSTM, path: Path) -> None:
    """Loads a state_dict without unpickling arbitrary objects; lists every mismatch."""
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
    expected = module.state_dict()
    problems = [
        f"missing key {k} (expected shape {list(v.shape)})"
        for k, v in expected.items()
        if k not in state
    ]
    problems += [
        f"unexpected key {k} (shape {list(v.shape)})" for k, v in state.items() if k not in expected
    ]
    problems += [
        f"{k}: shape {list(state[k].shape)} in the file, {list(v.shape)} for the declared layers"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        raise ExportError(
            f"{path} does not match --input-size {module.input_size} --layers "
            + " ".join(map(str, module.units))
            + (" --bidirectional" if module.bidirectional else "")
            + ":\n  "
            + "\n  ".join(problems)
        )
    module.load_state_dict({k: v.float() for k, v in state.items()})


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
    try:
        torch.manual_seed(args.seed)
        module = StackedLSTM(args.input_size, args.layers, args.bidirectional, args.dropout)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    if args.weights is not None:
        load_weights(module, args.weights)
    module.eval()
    path = target_path(args.repository, args.name, args.version, args.force)
    print(architecture_of(module).summary())
    print(f"\nVerifying against PyTorch (tolerance {TOLERANCE:g} absolute) ...", flush=True)
    model = build_model(module)
    try:
        report = verify(module, model)
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
