"""The layering rules of README's Layout section, enforced by reading the imports.

A rule broken here is a dependency that crept across a layer: CI fails before it spreads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Source folder -> installed package (pyproject's package-dir).
FOLDERS = {"service": "lstm_serving", "export": "lstm_serving.export"}
TENSOR_NAMES = {"input", "lengths", "last_hidden", "sequence"}
STATE_PREFIXES = ("initial_", "final_")


def modules() -> dict[str, Path]:
    """Every module of the package by its installed name."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of the file (top level or in a function)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


# (who, may not import, except these modules)
RULES = [
    ("lstm_serving", ("torch",), ("lstm_serving.export",)),
    ("lstm_serving", ("onnxruntime",), ("lstm_serving.core.runtime", "lstm_serving.export")),
    ("lstm_serving.contract", ("grpc", "onnxruntime", "torch", "lstm_serving.core"), ()),
    ("lstm_serving.core", ("grpc", "lstm_serving.proto", "lstm_serving.protocols"), ()),
    ("lstm_serving.core", ("lstm_serving.server", "lstm_serving.client"), ()),
    ("lstm_serving.protocols", ("grpc", "lstm_serving.server", "lstm_serving.client"), ()),
    ("lstm_serving.protocols", ("lstm_serving.core.runtime", "lstm_serving.core.batching"), ()),
    ("lstm_serving.server", ("lstm_serving.client", "lstm_serving.export"), ()),
    (
        "lstm_serving.client",
        ("lstm_serving.server", "lstm_serving.export", "lstm_serving.core.runtime"),
        ("lstm_serving.client.verify",),  # `load --verify` only, the verify extra
    ),
    ("lstm_serving.export", ("lstm_serving.server", "lstm_serving.client", "grpc"), ()),
    ("lstm_serving.export", ("lstm_serving.core", "lstm_serving.protocols"), ()),
]


@pytest.mark.parametrize(("who", "forbidden", "allowed"), RULES, ids=[str(r[:2]) for r in RULES])
def test_import_rules(who: str, forbidden: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    broken = [
        f"{name} imports {imported}"
        for name, path in modules().items()
        if under(name, who) and not under(name, *allowed)
        for imported in imports(path)
        if under(imported, *forbidden)
    ]
    assert not broken, broken


def test_the_rules_see_every_module() -> None:
    """A rule over a folder that moved would pass vacuously."""
    names = modules()
    for package in ("core", "protocols", "server", "client", "export"):
        assert any(under(n, f"lstm_serving.{package}") for n in names), package
    assert imports(names["lstm_serving.core.runtime"]) >= {"onnxruntime"}
    assert "lstm_serving.core.runtime" in imports(names["lstm_serving.client.verify"])


@pytest.mark.parametrize(
    "module", ["lstm_serving", "lstm_serving.client.cli", "lstm_serving.contract"]
)
def test_client_side_imports_neither_onnxruntime_nor_torch(module: str) -> None:
    """Transitively, in a fresh interpreter: what a calling service gets on import."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, {module}; print(' '.join(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert module in loaded
    assert not [m for m in loaded if under(m, "onnxruntime", "torch")]
    assert not [m for m in loaded if under(m, "lstm_serving.server", "service", "export")]


NOT_A_TENSOR = "# not a tensor name"  # marks a line whose literal names something else


def spelled_tensor_names(source: str) -> list[tuple[int, str]]:
    """String literals that are a tensor name, or begin one (f"final_h_{k}"), on lines not
    marked NOT_A_TENSOR (a protobuf field that happens to share a tensor's name)."""
    lines = source.splitlines()
    return [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and (node.value in TENSOR_NAMES or node.value.startswith(STATE_PREFIXES))
        and not lines[node.lineno - 1].endswith(NOT_A_TENSOR)
    ]


def test_no_tensor_name_is_spelled_outside_the_contract() -> None:
    source = 'x = {"sequence": 1}\ny = f"final_c_{k}"\nz = "sequence"  # not a tensor name'
    assert spelled_tensor_names(source) == [(1, "sequence"), (2, "final_c_")]
    spelled = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for name, path in modules().items()
        if name != "lstm_serving.contract"
        for line, text in spelled_tensor_names(path.read_text())
    ]
    assert not spelled, spelled


def test_installed_top_level_names_are_not_generic() -> None:
    """Only lstm_serving lands in site-packages (no `service`, `export` or `lstm`)."""
    text = (ROOT / "pyproject.toml").read_text()
    packages = text.split("packages = [", 1)[1].split("]", 1)[0]
    tops = {
        line.strip().strip('",').split(".")[0] for line in packages.splitlines() if line.strip()
    }
    assert tops == {"lstm_serving"}
