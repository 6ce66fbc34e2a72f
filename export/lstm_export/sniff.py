"""What a model file is, read from its bytes whatever its name or the flag it came with, so
a file passed to the wrong flag is named for what it is, with the flag (or tool) it needs.
Standard library only: nothing here runs or unpickles the file."""

from __future__ import annotations

import zipfile
from pathlib import Path

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
PICKLE_PROTOCOL = b"\x80"  # a legacy (non-zip) torch.save starts with a pickle opcode

KINDS = {
    "keras": "a Keras 3 model (.keras: config.json and model.weights.h5)",
    "keras-h5": "a Keras HDF5 file (.h5)",
    "torch": "a PyTorch file saved with torch.save (a state_dict, or a pickled module)",
    "torchscript": "a TorchScript archive (torch.jit.save)",
    "pt2": "a torch.export program (torch.export.save, .pt2)",
    "onnx": "an ONNX model",
    "unknown": "not a model file this tool knows",
}

# What each kind needs, said to a user who passed it to the wrong flag.
ROUTES = {
    "keras": "export it with --keras",
    "keras-h5": "export it with --keras",
    "torch": "export a state_dict with --weights",
    "torchscript": "export it with --torch",
    "pt2": "export it with --torch",
    "onnx": "adopt it with --onnx",
    "unknown": "pass a Keras file to --keras, a PyTorch state_dict to --weights, a program to "
    "--torch, an ONNX file to --onnx",
}


def kind_of(path: Path) -> str:
    """One of KINDS, from the file's first bytes and, for a zip, the names inside it."""
    with path.open("rb") as f:
        head = f.read(8)
    if head.startswith(HDF5_MAGIC):
        return "keras-h5"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        tails = {name.split("/", 1)[-1] for name in names}
        if "config.json" in names and "model.weights.h5" in names:
            return "keras"
        if "archive_format" in tails or "models/model.json" in tails:
            return "pt2"
        if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
            return "torchscript"
        if "data.pkl" in tails:
            return "torch"
        return "unknown"
    if head.startswith(PICKLE_PROTOCOL):
        return "torch"
    return "onnx" if _looks_like_onnx(path) else "unknown"


def _looks_like_onnx(path: Path) -> bool:
    """An ONNX ModelProto parses and has a graph with nodes (protobuf has no magic number)."""
    import onnx  # the export extra has it; only asked once the cheap checks say nothing

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return len(model.graph.node) > 0


def wrong_flag(path: Path, flag: str, expected: tuple[str, ...]) -> str | None:
    """The message for `path` passed to `flag` when it is not of the `expected` kinds."""
    kind = kind_of(path)
    if kind in expected:
        return None
    return f"{flag} {path}: this is {KINDS[kind]}; {ROUTES[kind]}"
