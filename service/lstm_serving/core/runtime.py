"""ONNX Runtime behind one small class: sessions, execution providers, warm-up.

The only module of the server that imports onnxruntime.
"""

from __future__ import annotations

import logging
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lstm_serving.contract import (
    INPUT,
    LENGTHS,
    METADATA_KEY,
    STATE_PARTS,
    Architecture,
    initial_state,
)
from lstm_serving.errors import ModelLoadError, ProviderError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def choose_providers(device: str) -> list[str]:
    """Providers to ask ONNX Runtime for, most preferred first."""
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        # onnxruntime-gpu finds CUDA and cuDNN installed as nvidia-* pip packages this way.
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        return [CUDA, CPU]
    if device == "cuda":
        raise ProviderError(
            f"--device cuda: ONNX Runtime {ort.__version__} has no CUDAExecutionProvider "
            f"(available: {', '.join(available)}). Install the onnxruntime-gpu package in place "
            "of onnxruntime, with a matching CUDA and cuDNN, or use --device cpu."
        )
    log.info("device auto: CUDAExecutionProvider not available, using CPU")
    return [CPU]


FileSignature = tuple[int, int, int]  # mtime (ns), size, inode
MODEL_READ_TIMEOUT_S = 30.0  # a model file read that takes longer is abandoned and refused


def read_model_file(path: Path, timeout: float = MODEL_READ_TIMEOUT_S) -> bytes:
    """The file's bytes, read on a daemon thread: a read that never ends (a hung network
    mount) is abandoned after `timeout` and the file refused, so it can wedge neither a reload
    nor shutdown. Anything but a regular file (a FIFO, a device) is refused unread."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise ModelLoadError(f"{path}: not a regular file (a FIFO or a device?): refused")
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read it: {exc.strerror}") from exc
    result: list[bytes | OSError] = []

    def read() -> None:
        try:
            result.append(path.read_bytes())
        except OSError as exc:
            result.append(exc)

    reader = threading.Thread(target=read, name=f"read {path.name}", daemon=True)
    reader.start()
    reader.join(timeout)
    if not result:
        raise ModelLoadError(f"{path}: reading it took over {timeout:g} s (a hung mount?): refused")
    if isinstance(result[0], OSError):
        raise ModelLoadError(f"{path}: cannot read it: {result[0].strerror}") from result[0]
    return result[0]


def file_signature(path: Path) -> FileSignature:
    """What tells a file changed in place (or was replaced) since it was loaded."""
    info = path.stat()
    return info.st_mtime_ns, info.st_size, info.st_ino


# Multiply-adds (weights x sequence-steps) from which a run is faster on --intra-op-threads
# threads than on one. Measured on 2 cores, 1 against 2 threads: below it the threads' wake-up
# costs more than they share (a seed B=1 run: 22 against 30 us; the large model's B=1 x 10
# steps: 354 against 460 us); both models break even near 60M (seed B=32 x 100, large B=4 x 10)
# and larger runs gain up to 2x (large B=16 x 100: 19.6 against 11.6 ms).
THREADED_FROM = 64_000_000


def _session(contents: bytes, threads: int, providers: list[str]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle ORT threads spin by default, taking the cores the gRPC event loop needs
    # (docs/decisions.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # ORT's CPU arena keeps the peak of the largest run for the process's life; without it
    # memory returns after a large request at no cost to small ones (docs/decisions.md).
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3  # ORT's warnings go to stderr unformatted otherwise
    return ort.InferenceSession(contents, options, providers=providers)


class Model:
    """One loaded model version: runs padded batches with their lengths as sequence_lens."""

    def __init__(
        self, path: Path, name: str, version: int, device: str = "cpu", intra_op_threads: int = 1
    ) -> None:
        self.name, self.version, self.path = name, version, path
        self.file_signature = file_signature(path)  # before reading: a write during it shows
        contents = read_model_file(path)
        providers = choose_providers(device)
        try:
            self.session = _session(contents, intra_op_threads, providers)
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != CUDA:
            raise ProviderError(
                f"--device cuda: the session for {path} fell back to {self.provider} "
                "(CUDA or cuDNN libraries missing?). Check onnxruntime-gpu's CUDA requirements."
            )
        self.architecture = self._read_architecture()
        self.output_names = [o.name for o in self.session.get_outputs()]
        # Small runs go to a one-thread session of the same model (see THREADED_FROM)
        self._one_thread = self.session
        if self.provider == CPU and intra_op_threads > 1:
            self._one_thread = _session(contents, 1, providers)
        self._per_step = sum(layer.parameters for layer in self.architecture.layers)

    def _read_architecture(self) -> Architecture:
        metadata = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in metadata:
            raise ModelLoadError(
                f"{self.path}: no {METADATA_KEY} metadata: an ONNX file lstm-export did not "
                "write. Adopt it (an ONNX LSTM graph, e.g. from a Triton repository) with "
                "lstm-export --onnx FILE --name NAME --repository DIR, or export the source "
                "model with lstm-export --torch / --keras / --weights"
            )
        try:
            arch = Architecture.from_json(metadata[METADATA_KEY])
        except ValueError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from exc
        for kind, found, expected in (
            ("inputs", self.session.get_inputs(), arch.graph_inputs()),
            ("outputs", self.session.get_outputs(), tuple(arch.output_shapes)),
        ):
            names = {node.name for node in found}
            if names != set(expected):
                raise ModelLoadError(
                    f"{self.path}: graph {kind} {sorted(names)} do not match its architecture "
                    f"(expected {sorted(expected)})"
                )
        return arch

    def run(
        self,
        inputs: np.ndarray,
        lengths: np.ndarray,
        outputs: Sequence[str],
        initial: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """inputs [B, T, F] float32 (token ids [B, T] int64), lengths [B] int32 in 1..T,
        initial states [directions, B, units] by name (None: zeros); the named outputs."""
        batch = inputs.shape[0]
        feeds = {INPUT: inputs, LENGTHS: lengths}
        if initial is not None:
            feeds.update(initial)
        else:
            for k, layer in enumerate(self.architecture.layers):
                zeros = np.zeros((layer.directions, batch, layer.units), dtype=np.float32)
                for part in STATE_PARTS:
                    feeds[initial_state(k, part)] = zeros
        work = batch * inputs.shape[1] * self._per_step
        session = self.session if work >= THREADED_FROM else self._one_thread
        answers = session.run(list(outputs), feeds)
        return {name: np.asarray(answer) for name, answer in zip(outputs, answers, strict=True)}

    def warm_up(self, max_batch_size: int) -> None:
        """Runs a few shapes once so the first real requests don't pay for allocation."""
        features = self.architecture.input_size
        for batch in sorted({1, max_batch_size}):
            for time in (1, 16):
                x = (
                    np.zeros((batch, time), dtype=np.int64)
                    if self.architecture.takes_tokens
                    else np.zeros((batch, time, features), dtype=np.float32)
                )
                self.run(x, np.full(batch, time, dtype=np.int32), self.output_names)
