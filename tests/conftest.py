"""Shared fixtures: the shipped seed model and paths to the installed console scripts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def seed_repository() -> Path:
    """The shipped model repository (models/seed/1/model.onnx)."""
    return ROOT / "models"
