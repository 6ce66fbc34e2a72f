"""ONNX Runtime behind Model: loading, refusing bad files, providers, exact batching."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lstm_serving.core.repository import scan_repository
from lstm_serving.core.runtime import (
    CPU,
    THREADED_FROM,
    Model,
    choose_providers,
    read_model_file,
)
from lstm_serving.errors import ModelLoadError, ProviderError


def _seed(seed_repository: Path) -> Model:
    return Model(seed_repository / "seed/1/model.onnx", "seed", 1, "cpu", 1)


def test_scan_repository(tmp_path: Path, seed_repository: Path) -> None:
    for rel in (
        "a/2/model.onnx",
        "a/10/model.onnx",
        "b/1/model.onnx",
        "c/x/model.onnx",
        "c/0/model.onnx",
        "d/1/other.onnx",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert [(m.name, m.version) for m in scan_repository(tmp_path)] == [
        ("a", 2),
        ("a", 10),
        ("b", 1),
    ]
    with pytest.raises(ModelLoadError, match="is not a directory"):
        scan_repository(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match=r"no models in .*lstm-export"):
        scan_repository(tmp_path / "d")


def test_links_out_of_the_repository_are_ignored_unless_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, outside = tmp_path / "models", tmp_path / "elsewhere"
    for folder in (root / "a/1", outside / "1"):
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"")
    (root / "a/2").symlink_to(root / "a/1")  # a link that stays inside: served
    (root / "b").symlink_to(outside)  # a model folder from elsewhere
    (root / "a/3").mkdir()
    (root / "a/3/model.onnx").symlink_to(outside / "1/model.onnx")  # a file from elsewhere
    assert [(m.name, m.version) for m in scan_repository(root)] == [("a", 1), ("a", 2)]
    assert f"ignored {root}/a/3/model.onnx: it links outside the repository" in caplog.text
    assert f"ignored {root}/b/1/model.onnx" in caplog.text
    assert "--allow-outside-links" in caplog.text
    allowed = scan_repository(root, allow_outside_links=True)
    assert [(m.name, m.version) for m in allowed] == [("a", 1), ("a", 2), ("a", 3), ("b", 1)]


def test_one_model_folder_under_a_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """--model-name: the repository is one model's folder, as KServe mounts it."""
    (tmp_path / "model.onnx").write_bytes(b"")
    assert [(m.name, m.version) for m in scan_repository(tmp_path, model_name="m")] == [("m", 1)]
    for version in ("1", "3"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "model.onnx").write_bytes(b"")
    found = scan_repository(tmp_path, model_name="m")
    assert [(m.name, m.version, m.path.parent.name) for m in found] == [
        ("m", 1, "1"),
        ("m", 3, "3"),
    ]
    assert "model.onnx: " in caplog.text and "is version 1 too" in caplog.text
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"<version>/model.onnx or model.onnx"):
        scan_repository(tmp_path / "empty", model_name="m")


def test_seed_model_loads_with_its_architecture(seed_repository: Path) -> None:
    model = _seed(seed_repository)
    assert model.provider == CPU
    assert [layer.units for layer in model.architecture.layers] == [64, 32]
    assert set(model.output_names) == {
        "last_hidden",
        "sequence",
        "final_h_0",
        "final_c_0",
        "final_h_1",
        "final_c_1",
    }


def test_rows_are_independent_of_batch_and_padding(seed_repository: Path) -> None:
    """What exact batching rests on: a row's result does not depend on the rest of its batch."""
    model = _seed(seed_repository)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 30, 2)).astype(np.float32)
    lengths = rng.integers(1, 31, size=40).astype(np.int32)
    batch = model.run(x, lengths, ["last_hidden", "sequence"])
    for i in (0, 17, 39):
        n = int(lengths[i])
        alone = model.run(x[i : i + 1, :n], lengths[i : i + 1], ["last_hidden", "sequence"])
        assert alone["last_hidden"].tobytes() == batch["last_hidden"][i : i + 1].tobytes()
        assert alone["sequence"].tobytes() == batch["sequence"][i : i + 1, :n].tobytes()
        assert not batch["sequence"][i, n:].any()


def test_a_row_alone_on_one_thread_equals_it_in_a_large_batch_on_several(
    seed_repository: Path,
) -> None:
    """With --intra-op-threads > 1, runs under THREADED_FROM multiply-adds take a one-thread
    session: exact batching must hold across the two (a row alone runs on one thread, the
    same row in a large batch on several)."""
    model = Model(seed_repository / "seed/1/model.onnx", "seed", 1, "cpu", 2)
    assert model._one_thread is not model.session
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 100, 2)).astype(np.float32)
    lengths = rng.integers(1, 101, size=300).astype(np.int32)
    assert 300 * 100 * model._per_step >= THREADED_FROM > 100 * model._per_step
    batch = model.run(x, lengths, ["last_hidden", "sequence"])
    for i in (0, 150, 299):
        n = int(lengths[i])
        alone = model.run(x[i : i + 1, :n], lengths[i : i + 1], ["last_hidden", "sequence"])
        assert alone["last_hidden"].tobytes() == batch["last_hidden"][i : i + 1].tobytes()
        assert alone["sequence"].tobytes() == batch["sequence"][i : i + 1, :n].tobytes()


def test_model_without_architecture_metadata_is_refused(
    tmp_path: Path, seed_repository: Path
) -> None:
    model = onnx.load(str(seed_repository / "seed/1/model.onnx"))
    del model.metadata_props[:]
    path = tmp_path / "m/1/model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))
    with pytest.raises(
        ModelLoadError, match=r"no lstm_serving\.architecture metadata.*lstm-export --onnx FILE"
    ):
        Model(path, "m", 1)


def test_corrupt_file_is_refused_with_its_path(tmp_path: Path, seed_repository: Path) -> None:
    path = tmp_path / "m/1/model.onnx"
    path.parent.mkdir(parents=True)
    shutil.copy(seed_repository / "seed/1/model.onnx", path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=f"{path}: ONNX Runtime cannot load it"):
        Model(path, "m", 1)


def test_providers() -> None:
    assert choose_providers("cpu") == [CPU]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here: the fail-fast path cannot be shown")
    assert choose_providers("auto") == [CPU]
    with pytest.raises(ProviderError, match="onnxruntime-gpu"):
        choose_providers("cuda")


def test_a_model_read_that_never_ends_is_abandoned_and_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hung mount, as a read that blocks: refused after the timeout, its thread left
    behind as a daemon (it holds up neither a reload nor the process's exit)."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    released = threading.Event()

    def hangs(self: Path) -> bytes:
        released.wait()
        return b""

    monkeypatch.setattr(Path, "read_bytes", hangs)
    began = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"reading it took over 0\.2 s \(a hung mount\?\)"):
        read_model_file(path, timeout=0.2)
    assert time.monotonic() - began < 2
    (reader,) = [t for t in threading.enumerate() if t.name == "read model.onnx"]
    assert reader.daemon
    released.set()
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ModelLoadError, match="not a regular file"):
        read_model_file(fifo)
