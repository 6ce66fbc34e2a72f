"""`lstm-export`: a stacked LSTM from PyTorch (our StackedLSTM, random or from a state_dict of
the usual layouts, a torch.export program, a traced TorchScript module), from a Keras file, or
adopted from an ONNX file (or a Triton model folder), written as a verified ONNX model.

Writes DIR/NAME/VERSION/model.onnx only after the model passes verification against its
source's own semantics.
Exit status: 0 written, 1 failed (bad weights, verification, existing version), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

from lstm_export.errors import ExportError
from lstm_export.keras_source import KerasError, read_keras, weights_of
from lstm_export.model import StackedLSTM
from lstm_export.onnx_graph import architecture_of, graph_of, recorded_architecture
from lstm_export.onnx_source import AdoptionError, read_onnx
from lstm_export.program_source import ProgramError, read_program
from lstm_export.sniff import kind_of, wrong_flag
from lstm_export.spec import HEAD_ACTIVATIONS, sha256_of
from lstm_export.torch_source import build_model
from lstm_export.torchscript_source import read_torchscript
from lstm_export.triton_folder import TritonConfigError, read_triton_folder
from lstm_export.verify import (
    TOLERANCE,
    VerificationReport,
    torch_reference,
    verify_adopted,
    verify_against,
    verify_program,
)
from lstm_export.weights_file import module_from_weights
from lstm_serving.contract import HEAD_INPUTS, Architecture


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
        "--torch",
        type=Path,
        help="a PyTorch program saved with torch.export.save (.pt2), or a traced TorchScript "
        "archive (torch.jit.save): its forward is read from the file, nothing assumed",
    )
    source.add_argument(
        "--weights",
        type=Path,
        help="a PyTorch state_dict (torch.save(model.state_dict(), path)): our StackedLSTM, a "
        "plain nn.LSTM, LSTMs under any prefix, and a trailing nn.Linear head",
    )
    source.add_argument(
        "--onnx",
        type=Path,
        help="an ONNX model whose recurrence is ONNX LSTM nodes (torch.onnx.export, tf2onnx, "
        "hand-built), or a Triton model folder (config.pbtxt and <version>/model.onnx): "
        "adopted, verified against the file itself",
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
    p.add_argument(
        "--name", help="model name in the repository (a Triton folder: its config's name)"
    )
    p.add_argument("--version", type=int, help="version number (default: next free, from 1)")
    p.add_argument("--repository", type=Path, required=True, help="model repository directory")
    p.add_argument("--force", action="store_true", help="overwrite an existing version")
    args = p.parse_args(argv)
    if args.version is not None and args.version < 1:
        p.error("--version must be >= 1")
    triton = args.onnx is not None and args.onnx.is_dir()
    if args.name is None and not triton:
        p.error("--name is required (but with a Triton model folder)")
    if args.name is not None and ("/" in args.name or args.name in ("", ".", "..")):
        p.error(f"--name {args.name!r} is not a valid directory name")
    if triton and args.version is not None:
        p.error("--version: a Triton model folder's versions keep their numbers")
    sources = (
        ("--weights", args.weights),
        ("--keras", args.keras),
        ("--torch", args.torch),
        ("--onnx", args.onnx),
    )
    for flag, path in sources:
        if path is not None and not path.is_file() and not (flag == "--onnx" and triton):
            p.error(f"{flag} {path}: no such file")
    if all(path is None for _, path in sources) and (not args.layers or not args.input_size):
        p.error(
            "--input-size and --layers are required without --weights, --keras, --torch or --onnx"
        )
    return args


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


Verification = Callable[[], VerificationReport]


def adopted_model(path: Path) -> tuple[onnx.ModelProto, Architecture, Verification]:
    """Our graph of the user's ONNX file, verified against the file itself."""
    misrouted = wrong_flag(path, "--onnx", ("onnx",))
    if misrouted is not None:
        raise ExportError(misrouted)
    try:
        adopted = read_onnx(path)
    except AdoptionError as exc:
        raise ExportError(f"{path}: {exc}") from exc
    for note in adopted.spec.notes:
        print(f"note: {note}")
    arch = architecture_of(adopted.spec, sha256_of(weights_of(adopted.spec)))
    model = graph_of(adopted.spec, arch)

    def verification() -> VerificationReport:
        try:
            return verify_adopted(model, adopted)
        except AdoptionError as exc:
            raise ExportError(f"{path}: {exc}") from exc

    return model, arch, verification


def source_model(args: argparse.Namespace) -> tuple[onnx.ModelProto, Architecture, Verification]:
    """The graph of the model the flags name, and how to verify it against that source."""
    if args.onnx is not None:
        return adopted_model(args.onnx)
    if args.torch is not None:
        misrouted = wrong_flag(args.torch, "--torch", ("pt2", "torchscript"))
        if misrouted is not None:
            raise ExportError(misrouted)
        reader = read_torchscript if kind_of(args.torch) == "torchscript" else read_program
        try:
            program = reader(args.torch)
        except ProgramError as exc:
            raise ExportError(f"{args.torch}: {exc}") from exc
        spec = program.spec
        arch = architecture_of(spec, sha256_of(weights_of(spec)), torch.__version__)
        model = graph_of(spec, arch)
        return model, arch, lambda: verify_program(model, program)
    if args.keras is not None:
        misrouted = wrong_flag(args.keras, "--keras", ("keras", "keras-h5"))
        if misrouted is not None:
            raise ExportError(misrouted)
        try:
            spec, reference = read_keras(args.keras)
        except KerasError as exc:
            raise ExportError(f"{args.keras}: {exc}") from exc
        for note in spec.notes:
            print(f"note: {note}")
        arch = architecture_of(spec, sha256_of(weights_of(spec)))
        model = graph_of(spec, arch)
        return model, arch, lambda: verify_against(model, reference, arch)
    if args.weights is not None:
        module = module_from_weights(args)
    else:
        try:
            torch.manual_seed(args.seed)
            module = StackedLSTM(args.input_size, args.layers, args.bidirectional, args.dropout)
        except ValueError as exc:
            raise ExportError(str(exc)) from exc
    module.eval()
    model = build_model(module)
    arch = recorded_architecture(model)
    return model, arch, lambda: verify_against(model, torch_reference(module), arch)


def run(args: argparse.Namespace) -> Path:
    if args.onnx is not None and args.onnx.is_dir():
        return run_triton(args)
    model, arch, verification = source_model(args)
    path = target_path(args.repository, args.name, args.version, args.force)
    verified(arch, verification)
    return write(model, path)


def verified(arch: Architecture, verification: Verification) -> VerificationReport:
    """Prints the layer table, then verifies, saying how it went."""
    print(arch.summary())
    print(f"\nVerifying against the source (tolerance {TOLERANCE:g} absolute) ...", flush=True)
    try:
        report = verification()
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
    return report


def run_triton(args: argparse.Namespace) -> Path:
    """Adopts every version of a Triton model folder (all verified before any is written),
    then prints the lstm-serve flags its config.pbtxt corresponds to."""
    try:
        folder = read_triton_folder(args.onnx)
    except TritonConfigError as exc:
        raise ExportError(str(exc)) from exc
    name = args.name or folder.name
    adopted = []
    for version, file in folder.versions:
        print(f"== {folder.name} version {version}: {file}")
        model, arch, verification = adopted_model(file)
        verified(arch, verification)
        adopted.append((model, target_path(args.repository, name, version, args.force)))
    for model, path in adopted:
        write(model, path)
    print(f"\nServe it as Triton did: lstm-serve --repository {args.repository} {folder.flags()}")
    for line in folder.ignored:
        print(f"  ignored from config.pbtxt: {line}")
    return adopted[-1][1]


def write(model: onnx.ModelProto, path: Path) -> Path:
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
