"""Lazy public names for package roots (PEP 562): a name's module loads on first use, so
importing one layer never loads another layer's dependencies."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, defined_in: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that imports each public name from its module."""

    def __getattr__(name: str) -> Any:
        if name not in defined_in:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(defined_in[name]), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    return __getattr__
