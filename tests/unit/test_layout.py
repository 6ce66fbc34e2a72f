"""The layering rules of docs/architecture.md, enforced by reading the imports and by importing
each layer in a fresh interpreter; and the tree as the wheel ships it.

A rule broken here is a dependency that crept across a layer: CI fails before it spreads.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

# Package folder -> its import name: the folder is named as it is imported.
FOLDERS = {"service/lstm_serving": "lstm_serving", "export/lstm_export": "lstm_export"}
TENSOR_NAMES = {"input", "lengths", "last_hidden", "sequence"}
STATE_PREFIXES = ("initial_", "final_")


def modules() -> dict[str, Path]:
    """Every module of the package by its installed name."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue  # generated: no rules of ours inside
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
    ("lstm_serving", ("torch",), ("lstm_export",)),
    ("lstm_serving", ("onnxruntime",), ("lstm_serving.core.runtime", "lstm_export")),
    ("lstm_serving.contract", ("grpc", "onnxruntime", "torch", "lstm_serving.core"), ()),
    ("lstm_serving.core", ("grpc", "lstm_serving.proto", "lstm_serving.protocols"), ()),
    ("lstm_serving.core", ("lstm_serving.server", "lstm_serving.client"), ()),
    ("lstm_serving.protocols", ("grpc", "lstm_serving.server", "lstm_serving.client"), ()),
    ("lstm_serving.protocols", ("lstm_serving.core.runtime", "lstm_serving.core.batching"), ()),
    ("lstm_serving.server", ("lstm_serving.client", "lstm_export"), ()),
    (
        "lstm_serving.client",
        ("lstm_serving.server", "lstm_export", "lstm_serving.core.runtime"),
        ("lstm_serving.client.load.verify",),  # `load --verify` only, the verify extra
    ),
    ("lstm_export", ("lstm_serving.server", "lstm_serving.client", "grpc"), ()),
    ("lstm_export", ("lstm_serving.core", "lstm_serving.protocols"), ()),
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
    for package in ("core", "protocols", "server", "client"):
        assert any(under(n, f"lstm_serving.{package}") for n in names), package
    assert any(under(n, "lstm_export") for n in names)
    assert imports(names["lstm_serving.core.runtime"]) >= {"onnxruntime"}
    assert "lstm_serving.core.runtime" in imports(names["lstm_serving.client.load.verify"])


def loaded_after_each(names: list[str]) -> dict[str, set[str]]:
    """Imports `names` in order in a fresh interpreter: what each one added to sys.modules."""
    script = (
        "import importlib, json, sys\n"
        "added = {}\n"
        "for name in sys.argv[1:]:\n"
        "    before = set(sys.modules)\n"
        "    importlib.import_module(name)\n"
        "    added[name] = sorted(set(sys.modules) - before)\n"
        "print(json.dumps(added))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, *names], capture_output=True, text=True, check=True
    ).stdout
    return {name: set(added) for name, added in json.loads(out).items()}


# (a layer's modules, what importing any of them may not load, except these modules)
RUN_TIME_RULES = [
    ("lstm_serving.contract", ("grpc", "onnxruntime", "torch"), ()),
    ("lstm_serving.core", ("grpc", "torch", "lstm_serving.client"), ()),
    ("lstm_serving.protocols", ("grpc", "torch", "onnxruntime"), ()),
    ("lstm_serving.server", ("torch", "lstm_serving.client", "lstm_export"), ()),
    (
        "lstm_serving.client",
        ("onnxruntime", "torch", "lstm_serving.server"),
        ("lstm_serving.client.load.verify",),  # `load --verify` only, the verify extra
    ),
    ("lstm_export.spec", ("torch", "grpc"), ()),
    ("lstm_export.onnx_graph", ("torch", "grpc"), ()),
    ("lstm_export", ("grpc", "lstm_serving.server", "lstm_serving.client"), ()),
]


@pytest.mark.parametrize(
    ("layer", "forbidden", "allowed"), RUN_TIME_RULES, ids=[r[0] for r in RUN_TIME_RULES]
)
def test_layers_hold_at_run_time(
    layer: str, forbidden: tuple[str, ...], allowed: tuple[str, ...]
) -> None:
    """The first module whose import loads a forbidden library is the one named: the modules
    before it did not load it (a lazy package root keeps a layer from loading another)."""
    names = [n for n in modules() if under(n, layer) and not under(n, *allowed)]
    assert names, f"no module under {layer}: the rule would pass vacuously"
    broken = {
        name: sorted(m for m in added if under(m, *forbidden))
        for name, added in loaded_after_each(names).items()
    }
    assert not {name: libs for name, libs in broken.items() if libs}


def test_the_run_time_check_sees_a_violation() -> None:
    """The check itself can fail: the server layer does load grpc."""
    added = loaded_after_each(["lstm_serving.server.app"])["lstm_serving.server.app"]
    assert "grpc" in added
    assert "lstm_serving.client" not in added


def test_the_wheel_holds_the_tree_and_nothing_generic(tmp_path: Path) -> None:
    """Built from the tree with no hand list: every module of both packages is in the wheel,
    and nothing else lands at the top of site-packages."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    in_tree = {
        f"{package.replace('.', '/')}/{path.relative_to(ROOT / folder)}"
        for folder, package in FOLDERS.items()
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".pyi", ".typed")
    }
    assert in_tree - shipped == set()
    tops = {name.split("/")[0] for name in shipped}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"lstm_serving", "lstm_export"}


def test_the_editable_install_is_a_plain_path_entry() -> None:
    """No import hook: editors and type checkers resolve the package from the path alone."""
    import lstm_export
    import lstm_serving

    assert Path(lstm_serving.__file__).is_relative_to(ROOT / "service")
    assert Path(lstm_export.__file__).is_relative_to(ROOT / "export")
    site = Path(sysconfig.get_paths()["purelib"])
    assert not list(site.glob("__editable__*lstm*")), "a setuptools import hook is installed"
    hooks = [
        line
        for pth in site.glob("*lstm*.pth")
        for line in pth.read_text().splitlines()
        if line.startswith("import")
    ]
    assert not hooks, hooks


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
