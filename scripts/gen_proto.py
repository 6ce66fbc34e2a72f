"""Generates the Python code for proto/ (messages, gRPC stubs and typed stubs).

The one way generated code is made; never edit its output by hand. A test runs this
into a temporary folder and fails when the committed files differ.
Usage: python scripts/gen_proto.py [OUT_DIR]   (default: service/lstm_serving/proto/)

The sources proto/lstm/**.proto generate into the package `lstm_serving.proto`, so a generic
top-level `lstm` never lands in site-packages: protoc writes imports from the .proto paths
(`from lstm.v1 import lstm_pb2`), and this script rewrites them to the installed names.
The wire names (`lstm.v1.LstmService`, `inference.*`) and the descriptors are not touched.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE_DIR = ROOT / "service" / "lstm_serving" / "proto"
PROTOS = ["lstm/v1/lstm.proto", "lstm/kserve/v2/grpc_predict_v2.proto"]
INSTALLED_AS = "lstm_serving.proto"  # what the proto/lstm folder's code is imported as
# `lstm.v1` or `lstm.kserve.v2` where it names a Python module: in `from X import` and in
# `X.<name>_pb2` (module paths in .pyi stubs and in the descriptor builder's module name).
_MODULE_PATH = re.compile(r"\blstm((?:\.\w+)*?)(?=( import |\.\w+_pb2\b))")


def _plugin(name: str) -> str:
    """mypy-protobuf's plugins live next to the running interpreter."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the dev extra (mypy-protobuf)")
    return found


def generate(out_dir: Path) -> list[Path]:
    """Writes *_pb2.py, *_pb2_grpc.py and their .pyi stubs under out_dir (lstm/v1 -> v1)."""
    with tempfile.TemporaryDirectory(prefix="gen_proto_") as tmp:
        scratch = Path(tmp)
        outputs = ("python_out", "grpc_python_out", "mypy_out", "mypy_grpc_out")
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            *(f"--{output}={scratch}" for output in outputs),
            *PROTOS,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        generated = []
        for made in sorted(p for p in (scratch / "lstm").rglob("*_pb2*") if p.is_file()):
            path = out_dir / made.relative_to(scratch / "lstm")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_MODULE_PATH.sub(INSTALLED_AS + r"\1", made.read_text()))
            generated.append(path)
    return generated


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE_DIR
    for path in generate(target):
        print(path.relative_to(target))
