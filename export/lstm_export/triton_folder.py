"""A Triton model folder (`config.pbtxt`, `<version>/model.onnx`) read for adoption: its
versions' ONNX files, and the `lstm-serve` flags its config corresponds to, with what of the
config has no counterpart named. The config is parsed with Triton's own ModelConfig message
(tritonclient's generated code), so a misspelt field is an error, as Triton makes it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf import text_format
from google.protobuf.message import Message


def _model_config_code() -> ModuleType:
    """tritonclient's generated code for Triton's model_config.proto, loaded alone: the package
    it sits in (tritonclient.grpc) imports grpc, which the export stage does not load."""
    package = importlib.util.find_spec("tritonclient")
    if package is None or package.origin is None:
        raise TritonConfigError("reading a Triton folder needs tritonclient (the export extra)")
    path = Path(package.origin).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("lstm_export._triton_model_config_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ONNX_PLATFORMS = ("", "onnxruntime_onnx")
ONNX_BACKENDS = ("", "onnxruntime")
# What needs no flag here: the model file says it, or lstm-serve does it itself.
UNDERSTOOD = {
    "name": "the model's name (--name overrides it)",
    "platform": "",
    "backend": "",
    "default_model_filename": "",
    "input": "read from the model file",  # not a tensor name
    "output": "read from the model file",
}


class TritonConfigError(Exception):
    """A folder that is not a Triton ONNX model, or a config.pbtxt Triton would refuse."""


@dataclass
class TritonFolder:
    name: str
    versions: list[tuple[int, Path]]  # (version, its ONNX file), in order
    serve_flags: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # "field: why", for each one set

    def flags(self) -> str:
        return " ".join(self.serve_flags)


def read_triton_folder(folder: Path) -> TritonFolder:
    code = _model_config_code()
    config = code.ModelConfig()
    config_path = folder / "config.pbtxt"
    if config_path.is_file():
        try:
            text_format.Parse(config_path.read_text(), config)
        except text_format.ParseError as exc:
            raise TritonConfigError(f"{config_path}: not a Triton model config: {exc}") from exc
    if config.platform not in ONNX_PLATFORMS or config.backend not in ONNX_BACKENDS:
        raise TritonConfigError(
            f"{config_path}: platform {config.platform!r}, backend {config.backend!r}: only "
            "ONNX models (onnxruntime_onnx) are adopted; export the source model instead"
        )
    filename = config.default_model_filename or "model.onnx"
    versions = sorted(
        (int(p.name), p / filename)
        for p in folder.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / filename).is_file()
    )
    if not versions:
        raise TritonConfigError(f"{folder}: no <version>/{filename} in it")
    adopted = TritonFolder(config.name or folder.name, versions)
    _map(config, adopted, code.ModelInstanceGroup.Kind)
    return adopted


def _map(config: Any, folder: TritonFolder, kinds: Any) -> None:
    """The flags for what maps, a line for each other field the config sets."""
    for descriptor, value in config.ListFields():
        name = descriptor.name
        if name in UNDERSTOOD:
            continue
        if name == "max_batch_size":
            folder.serve_flags.append(f"--max-batch-size {value}")
        elif name == "dynamic_batching":
            _dynamic_batching(value, folder, name)
        elif name == "sequence_batching":
            _sequence_batching(value, folder)
        elif name == "instance_group":
            _instances(value, folder, kinds)
        elif name == "version_policy":
            folder.ignored.append("version_policy: lstm-serve serves every version it finds")
        else:
            folder.ignored.append(f"{name}: no lstm-serve counterpart")
    if config.max_batch_size == 0:
        folder.ignored.append(
            "max_batch_size 0 (no batching): lstm-serve batches exactly, answers unchanged"
        )


def _dynamic_batching(batching: Message, folder: TritonFolder, prefix: str) -> None:
    """dynamic_batching, or sequence_batching's oldest / direct strategy."""
    for descriptor, value in batching.ListFields():
        if descriptor.name == "max_queue_delay_microseconds":
            folder.serve_flags.append(f"--max-queue-delay-ms {value / 1000:g}")
        else:
            folder.ignored.append(f"{prefix}.{descriptor.name}: no lstm-serve counterpart")


def _sequence_batching(batching: Message, folder: TritonFolder) -> None:
    for descriptor, value in batching.ListFields():
        if descriptor.name == "max_sequence_idle_microseconds":
            folder.serve_flags.append(f"--sequence-idle-timeout {value / 1e6:g}")
        elif descriptor.name == "control_input":
            folder.ignored.append(
                "sequence_batching.control_input: lstm-serve reads Triton's sequence_id, "
                "sequence_start and sequence_end request parameters itself"
            )
        elif descriptor.name == "state":
            folder.ignored.append(
                "sequence_batching.state: lstm-serve holds each sequence's LSTM state itself"
            )
        elif descriptor.name in ("oldest", "direct"):
            _dynamic_batching(value, folder, f"sequence_batching.{descriptor.name}")
        else:
            folder.ignored.append(f"sequence_batching.{descriptor.name}: no lstm-serve counterpart")


def _instances(groups: list[Any], folder: TritonFolder, kind_names: Any) -> None:
    kinds = {kind_names.Name(g.kind) for g in groups}
    count = sum(g.count or 1 for g in groups)
    folder.serve_flags.append(f"--workers {count}")
    if kinds == {"KIND_GPU"}:
        folder.serve_flags.append("--device cuda")
    elif kinds == {"KIND_CPU"}:
        folder.serve_flags.append("--device cpu")
    else:
        folder.ignored.append(
            f"instance_group kinds {sorted(kinds)}: lstm-serve's --device auto picks CUDA when "
            "it is usable"
        )
