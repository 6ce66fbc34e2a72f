"""The repository scan on its own: which files are versions, which are ignored and why."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from lstm_serving.core.repository import scan_repository
from lstm_serving.errors import ModelLoadError
from tests.helpers import SEED_REPOSITORY

SEED_FILE = SEED_REPOSITORY / "seed/1/model.onnx"


def _place(root: Path, *relative: str) -> None:
    for path in relative:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SEED_FILE, root / path)


def test_every_version_folder_of_every_model_sorted(tmp_path: Path) -> None:
    _place(tmp_path, "b/2/model.onnx", "b/10/model.onnx", "a/1/model.onnx")
    found = [(m.name, m.version) for m in scan_repository(tmp_path)]
    assert found == [("a", 1), ("b", 2), ("b", 10)]


def test_folders_that_are_not_versions_and_links_outside_are_ignored_saying_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "models"
    _place(root, "m/1/model.onnx", "m/v2/model.onnx", "m/0/model.onnx")
    (root / "n/1").mkdir(parents=True)
    (root / "n/1/model.onnx").symlink_to(SEED_FILE)  # outside the repository
    with caplog.at_level(logging.WARNING):
        found = [(m.name, m.version) for m in scan_repository(root)]
    assert found == [("m", 1)]
    assert "version folders are integers >= 1" in caplog.text
    assert "--allow-outside-links" in caplog.text
    assert ("n", 1) in [(m.name, m.version) for m in scan_repository(root, True)]


def test_one_model_folder_as_kserve_mounts_it(tmp_path: Path) -> None:
    _place(tmp_path, "model.onnx")
    assert [(m.name, m.version) for m in scan_repository(tmp_path, model_name="x")] == [("x", 1)]


def test_nothing_to_serve_says_the_layout_expected(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"expected .*/<name>/<version>/model\.onnx"):
        scan_repository(tmp_path)
    with pytest.raises(ModelLoadError, match="is not a directory"):
        scan_repository(tmp_path / "absent")
