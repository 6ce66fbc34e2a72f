"""System tests: real servers, processes, abuse, overload, drain, soak and deployment. All of
them are marked `slow`, so `make test-fast` (unit tests only) leaves them out."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(HERE):
            item.add_marker(pytest.mark.slow)
