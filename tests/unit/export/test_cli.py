"""`lstm-export` end to end, in a subprocess, including its error paths."""

from __future__ import annotations

import pickle
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lstm_export import StackedLSTM
from tests.helpers import export

pytestmark = pytest.mark.slow  # every test runs lstm-export as a process (a few seconds each)


def _export(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return export(
        "--input-size", "2", "--layers", "6", "4", "--name", "m", "--repository", str(repo), *args
    )


def test_exports_next_free_version_and_prints_summary(tmp_path: Path) -> None:
    first = _export(tmp_path)
    assert first.returncode == 0, first.stderr
    assert "lstm_1: LSTM(4)" in first.stdout and "Params (Keras)" in first.stdout
    assert "Verification passed" in first.stdout and "max abs difference" in first.stdout
    assert (tmp_path / "m/1/model.onnx").is_file()
    second = _export(tmp_path, "--seed", "3")
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "m/2/model.onnx").is_file()
    assert not list(tmp_path.rglob("*.tmp"))


def test_existing_version_is_not_overwritten_without_force(tmp_path: Path) -> None:
    assert _export(tmp_path, "--version", "4").returncode == 0
    before = (tmp_path / "m/4/model.onnx").read_bytes()
    again = _export(tmp_path, "--version", "4", "--seed", "9")
    assert again.returncode == 1
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "m/4/model.onnx").read_bytes() == before
    forced = _export(tmp_path, "--version", "4", "--seed", "9", "--force")
    assert forced.returncode == 0
    assert (tmp_path / "m/4/model.onnx").read_bytes() != before


def test_weights_file_is_exported_exactly(tmp_path: Path) -> None:
    torch.manual_seed(7)
    module = StackedLSTM(2, [6, 4]).eval()
    weights = tmp_path / "w.pt"
    torch.save(module.state_dict(), weights)
    result = _export(tmp_path / "repo", "--weights", str(weights))
    assert result.returncode == 0, result.stderr
    session = ort.InferenceSession(str(tmp_path / "repo/m/1/model.onnx"))
    x = np.random.default_rng(0).standard_normal((3, 5, 2)).astype(np.float32)
    feeds = {"input": x, "lengths": np.array([5, 2, 1], np.int32)}
    for k, units in enumerate([6, 4]):
        feeds[f"initial_h_{k}"] = feeds[f"initial_c_{k}"] = np.zeros((1, 3, units), np.float32)
    (got,) = session.run(["last_hidden"], feeds)
    with torch.no_grad():
        _, expected = module(torch.from_numpy(x), torch.tensor([5, 2, 1]))
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-5)


def test_mismatched_weights_list_every_mismatch(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    state = StackedLSTM(2, [6, 5]).state_dict()
    state["layers.0.extra"] = torch.zeros(1)
    del state["layers.0.bias_hh_l0"]
    torch.save(state, weights)
    result = _export(tmp_path / "repo", "--weights", str(weights))
    assert result.returncode == 1
    assert "missing key layers.0.bias_hh_l0" in result.stderr
    assert "unexpected key layers.0.extra" in result.stderr
    assert "layers.1.weight_hh_l0: shape [20, 5] in the file, [16, 4]" in result.stderr
    assert not (tmp_path / "repo").exists()


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("ARBITRARY CODE RAN",))


def test_bad_weights_files_are_refused_without_running_code(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"x": _Payload()}))
    for path in (garbage, evil):
        result = _export(tmp_path / "repo", "--weights", str(path))
        assert result.returncode == 1, path
        assert str(path) in result.stderr
        assert "ARBITRARY CODE RAN" not in result.stdout + result.stderr
    missing = _export(tmp_path / "repo", "--weights", str(tmp_path / "missing.pt"))
    assert missing.returncode == 2 and "missing.pt: no such file" in missing.stderr  # usage
    whole_model = tmp_path / "whole.pt"
    torch.save(StackedLSTM(2, [6, 4]), whole_model)
    result = _export(tmp_path / "repo", "--weights", str(whole_model))
    assert result.returncode == 1 and "torch.save(model.state_dict(), path)" in result.stderr
    assert "Weights only load failed" not in result.stderr  # not torch's page of text
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_only)
    result = _export(tmp_path / "repo", "--weights", str(tensor_only))
    assert result.returncode == 1 and "not a state_dict" in result.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = _export(tmp_path, "--version", "0")
    assert result.returncode == 2 and "--version must be >= 1" in result.stderr
    missing = export("--layers", "4")
    assert missing.returncode == 2 and "required" in missing.stderr
