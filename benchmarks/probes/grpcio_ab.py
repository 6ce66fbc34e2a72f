"""grpcio releases A/B: the bare echo and lstm-serve on each, h2load as the client, CPU per call.

grpcio's own cost per call moves between releases (1.84 gave grpc.aio servers an asyncio task
and wait per call: grpc/grpc#41796), and it is most of a call's cost here, so constraints.txt
pins the release this table picks. Each release gets a venv under build/grpcio-ab/ with the
server's other pins, running this checkout's code; the releases take turns in every round.
CPU is read from /proc around each h2load run: the server's event-loop thread, and the whole
process. lstm-serve's runs are followed by a server-side count of non-OK answers (must be 0).
Prints a table and writes JSON.
Usage: python -m benchmarks.probes.grpcio_ab [--versions 1.75.1 1.83.2 1.85.3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.h2load_bench import V1, Case, grpc_body, h2load, require_h2load, server_totals
from benchmarks.servers import ROOT, Server, echo_on, lstm_serve, running

CASES = (
    Case(V1 + "Predict", 1, 1),
    Case(V1 + "Predict", 1, 64),
    Case(V1 + "PredictStream", 1, 16, 100),
)
WITH_DEPS = ("protobuf", "numpy", "onnxruntime", "prometheus_client")  # pinned as in CI
NO_DEPS = ("grpcio-health-checking", "grpcio-reflection")  # would pull in another grpcio
WORK = ROOT / "build/grpcio-ab"
TICKS = os.sysconf("SC_CLK_TCK")


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def python_with(version: str, pinned: dict[str, str]) -> Path:
    """A venv with grpcio `version` and the server's other pins (made once, then reused)."""
    venv = WORK / f"venv-{version}"
    if not (venv / "bin/python").exists():
        print(f"making {venv} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin/pip"), "install", "-q"]
        subprocess.run([*pip, f"grpcio=={version}", *(f"{n}=={pinned[n]}" for n in WITH_DEPS)],
                       check=True)  # fmt: skip
        # Their generated stubs refuse an older grpcio too: below the pins, the same release.
        older = _release(version) < min(_release(pinned[n]) for n in NO_DEPS)
        subprocess.run([*pip, "--no-deps", *(f"{n}=={version if older else pinned[n]}"
                                             for n in NO_DEPS)], check=True)  # fmt: skip
    return venv / "bin/python"


def source_for(version: str) -> Path:
    """This checkout laid out as the package: the generated stubs refuse a grpcio older than
    the grpcio-tools that made them, so in this copy that floor is `version`."""
    tree = WORK / f"src-{version}"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(
        ROOT / "service/lstm_serving",
        tree / "lstm_serving",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for stub in tree.rglob("*_pb2_grpc.py"):
        text = re.sub(r"GRPC_GENERATED_VERSION = '[^']*'", f"GRPC_GENERATED_VERSION = '{version}'",
                      stub.read_text())  # fmt: skip
        stub.write_text(text)
    return tree


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    stat = Path(f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def measure(server: Server, bodies: dict[Case, Path]) -> list[dict[str, float]]:
    """One server started, every case run once against it; CPU per call for each."""
    with running(server) as (target, metrics_url, _):
        pid = server.pids[-1]
        rows = []
        for case in CASES:
            before = cpu_seconds(pid), cpu_seconds(pid, pid)
            result = h2load(target, case, bodies[case], 4.0)
            after = cpu_seconds(pid), cpu_seconds(pid, pid)
            calls = result["requests"]
            rows.append({
                "requests_per_second": result["requests_per_second"],
                "process_us": (after[0] - before[0]) / calls * 1e6,
                "event_loop_us": (after[1] - before[1]) / calls * 1e6,
            })  # fmt: skip
        if metrics_url:  # counted once, after every case: the server's count since it began
            rows[-1]["not_ok"] = server_totals(metrics_url)["not_ok"]
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--versions", nargs="+", default=["1.75.1", "1.83.2", "1.85.3"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/grpcio_ab.json")
    args = parser.parse_args()
    require_h2load()
    pinned = pins()
    setups = {v: (python_with(v, pinned), source_for(v)) for v in args.versions}
    runs: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        bodies = {case: grpc_body(case, Path(tmp)) for case in CASES}
        for round_ in range(args.rounds):
            for version, (python, tree) in setups.items():
                env = {**os.environ, "PYTHONPATH": str(tree)}
                env.pop("PROMETHEUS_MULTIPROC_DIR", None)
                servers = (
                    Server("echo", echo_on(python, env), metrics=False),
                    Server("lstm-serve", lstm_serve(ROOT / "models", python=python, env=env)),
                )
                for server in servers:
                    print(f"round {round_ + 1}: grpcio {version}, {server.name}", file=sys.stderr)
                    for case, row in zip(CASES, measure(server, bodies), strict=True):
                        runs.setdefault((version, server.name, case.name), []).append(row)
    rows: list[dict[str, Any]] = []
    print("| grpcio | server | case | calls/s | event-loop CPU us/call | process CPU us/call |")
    print("|---|---|---|---|---|---|")
    for (version, server_name, name), measured in runs.items():
        keys = ("requests_per_second", "event_loop_us", "process_us")
        medians = {key: statistics.median(r[key] for r in measured) for key in keys}
        rows.append({"grpcio": version, "server": server_name, "case": name, **medians,
                     "not_ok": sum(r.get("not_ok", 0.0) for r in measured),
                     "runs": measured})  # fmt: skip
        print(f"| {version} | {server_name} | {name} | {medians['requests_per_second']:,.0f} | "
              f"{medians['event_loop_us']:.0f} | {medians['process_us']:.0f} |")  # fmt: skip
    args.json.write_text(json.dumps({"rounds": args.rounds, "rows": rows}, indent=2) + "\n")
    if any(row["not_ok"] for row in rows):
        sys.exit("lstm-serve answered some requests with an error: see not_ok")


if __name__ == "__main__":
    main()
