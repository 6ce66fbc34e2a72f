"""The committed generated code is what scripts/gen_proto.py makes from proto/ today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/gen_proto.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*"))
    assert generated, "the generator wrote nothing"
    stale = [
        str(p)
        for p in generated
        if (tmp_path / p).read_bytes() != (ROOT / "service/lstm_serving/proto" / p).read_bytes()
    ]
    assert not stale, f"stale generated code {stale}: run `make proto` and commit"
