"""The side-by-side benchmark: one command, one machine, one load generator, every server.
(Over 250 lines: the plan of every measurement reads best in one place.)

    python -m benchmarks.run [--repeats 3] [--duration 4] [--quick]      (or: make bench)

Measures, interleaving the servers (their order rotates each repeat) and taking medians:
  raw ONNX Runtime in process (the limit), a bare grpc.aio echo server (the Python gRPC
  ceiling), lstm-serve in several configurations, and Seldon MLServer 1.7.1 with adaptive
  batching and an ONNX Runtime runtime (benchmarks/mlserver/), in its own virtual environment.
Writes BENCHMARKS.md, benchmarks/results/results.json and benchmarks/results/throughput.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.servers import (
    BIN,
    ROOT,
    SEED,
    Server,
    echo,
    ensure_mlserver_venv,
    export_large,
    export_text,
    lstm_serve,
    mlserver,
    mlserver_folder,
    raw_ort,
    rss_mib,
    running,
)


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    args: tuple[str, ...]
    levels: tuple[int, ...]
    servers: tuple[str, ...]
    verify: bool = False


SCENARIOS = (
    Scenario(
        "B=1 unary",
        "seed",
        ("--batch-size", "1", "--time", "10"),
        (1, 16, 64),
        (
            "echo",
            "lstm-serve",
            "lstm-serve (v2)",
            "lstm-serve, batching off",
            "lstm-serve, 2 workers",
            "mlserver",
        ),
    ),
    Scenario(
        "B=32 unary",
        "seed",
        ("--batch-size", "32", "--time", "10"),
        (16,),
        ("echo", "lstm-serve", "lstm-serve (v2)", "lstm-serve, 2 workers", "mlserver"),
    ),
    Scenario(
        "B=1 v2 stream",
        "seed",
        ("--batch-size", "1", "--time", "10", "--protocol", "v2-stream"),
        (64,),
        ("lstm-serve",),
    ),
    Scenario(  # the level is the number of sequences, each on its own PredictStream
        "sequences, 1-step chunks on streams",
        "seed",
        ("--sequences", "256", "--chunk", "1", "--time", "20", "--protocol", "lstm-stream"),
        (256,),
        ("lstm-serve",),
    ),
    Scenario(
        "large B=16",
        "large",
        ("--batch-size", "16", "--time", "100"),
        (4,),
        ("lstm-serve", "mlserver"),
    ),
    Scenario(  # token ids: the text case (IMDB-shaped model, T=200)
        "text B=1",
        "text",
        ("--batch-size", "1", "--time", "200"),
        (16,),
        ("lstm-serve", "lstm-serve (v2)"),
    ),
    Scenario(
        "text B=32",
        "text",
        ("--batch-size", "32", "--time", "200"),
        (4,),
        ("lstm-serve",),
    ),
    Scenario(
        "mixed lengths B=4",
        "seed",
        ("--batch-size", "4", "--time", "20", "--lengths", "uniform:1:20"),
        (16,),
        ("lstm-serve", "lstm-serve (v2)", "mlserver"),
        verify=True,
    ),
)


# Told to the load generator, as the echo server and MLServer cannot be asked (DescribeModel)
FEATURES = {"seed": ("--features", "2"), "large": ("--features", "64")}


def load(
    target: str,
    server: Server,
    scenario: Scenario,
    level: int,
    duration: float,
    metrics_url: str | None,
    model_file: Path,
) -> dict[str, Any]:
    protocol = server.protocol
    args = list(scenario.args)
    if "--protocol" in args:
        protocol = args.pop(args.index("--protocol") + 1)
        args.remove("--protocol")
    command = [
        str(BIN / "lstm-client"),
        "--target",
        target,
        "--json",
        "load",
        scenario.model,
        "--protocol",
        protocol,
        "--concurrency",
        str(level),
        "--duration",
        str(duration),
        "--warmup",
        "1",
        "--channels",
        str(server.channels),
        *FEATURES.get(scenario.model, ()),  # the text model's embedding: asked of the server
        *args,
    ]
    if metrics_url and server.name.startswith("lstm-serve"):
        command += ["--metrics-url", metrics_url]
    if scenario.verify:
        command += ["--verify", str(model_file)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration * 10 + 120)
    if not out.stdout:
        return {"failed": out.stderr[-500:]}
    result: dict[str, Any] = json.loads(out.stdout)["levels"][0]
    return result


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "failed" not in r]
    if not ok:
        return {"failed": runs[0].get("failed", "no run")}
    rps = [r["requests_per_second"] for r in ok]
    row = {
        "requests_per_second": statistics.median(rps),
        "sequences_per_second": statistics.median(r["sequences_per_second"] for r in ok),
        "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in ok),
        "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in ok),
        "spread": (min(rps), max(rps)),
        "errors": sum(sum(r["errors"].values()) for r in ok),
        "runs": len(ok),
    }
    if "server" in ok[0]:
        row["server_side"] = {
            k: statistics.median(r["server"][k] for r in ok) for k in ok[0]["server"]
        }
    if "verify" in ok[0]:
        row["verify"] = {
            "checked": sum(r["verify"]["checked"] for r in ok),
            "wrong": sum(r["verify"]["wrong"] for r in ok),
            "max_abs_diff": max(r["verify"]["max_abs_diff"] for r in ok),
        }
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per level")
    parser.add_argument("--quick", action="store_true", help="1 repeat of 2 s: a smoke run")
    parser.add_argument("--no-mlserver", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.duration = 1, 2.0
    work = Path(tempfile.mkdtemp(prefix="lstm-bench-"))
    repository = work / "models"
    shutil.copytree(ROOT / "models", repository)
    print("exporting the large model (3 x 256, 64 features) ...", file=sys.stderr)
    large = export_large(repository)
    print("exporting the text model (IMDB-shaped, token ids) ...", file=sys.stderr)
    text = export_text(repository)
    files = {"seed": SEED, "large": large, "text": text}
    servers = [
        Server("echo", echo, metrics=False),
        Server("lstm-serve", lstm_serve(repository)),
        Server("lstm-serve (v2)", lstm_serve(repository), protocol="v2"),
        Server("lstm-serve, batching off", lstm_serve(repository, "--max-batch-size", "1")),
        Server("lstm-serve, 2 workers", lstm_serve(repository, "--workers", "2"), channels=2),
    ]
    float_models = {name: path for name, path in files.items() if name != "text"}  # its runtime
    if not args.no_mlserver and ensure_mlserver_venv():
        servers.append(
            Server(
                "mlserver",
                mlserver(mlserver_folder(float_models, work / "mlserver")),
                protocol="v2",
                metrics=False,
            )
        )
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    facts: dict[str, dict[str, list[float]]] = {}
    for repeat in range(args.repeats):
        order = servers[repeat % len(servers) :] + servers[: repeat % len(servers)]
        for server in order:
            print(f"[{repeat + 1}/{args.repeats}] {server.name}", file=sys.stderr)
            with running(server) as (target, metrics_url, ready):
                fact = facts.setdefault(server.name, {"start_s": [], "rss_mib": []})
                fact["start_s"].append(ready)
                for scenario in SCENARIOS:
                    if server.name not in scenario.servers:
                        continue
                    for level in scenario.levels:
                        runs.setdefault((scenario.name, server.name, level), []).append(
                            load(
                                target,
                                server,
                                scenario,
                                level,
                                args.duration,
                                metrics_url,
                                files[scenario.model],
                            )
                        )
                fact["rss_mib"].append(rss_mib(server.pids[-1]))
    limits = {
        f"seed B={b}, {t} thread{'s' * (t > 1)}": raw_ort(SEED, b, 10, t, args.duration)
        for b in (1, 32)
        for t in (1, 2)
    }
    limits["large B=16, 2 threads"] = raw_ort(large, 16, 100, 2, args.duration)
    for batch in (1, 32):
        limits[f"text B={batch}, 2 threads"] = raw_ort(text, batch, 200, 2, args.duration)
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "repeats": args.repeats,
        "duration_s": args.duration,
        "limits_sequences_per_second": limits,
        "rows": [
            {"scenario": s, "server": n, "level": c, **median_row(r)}
            for (s, n, c), r in runs.items()
        ],
        "servers": {n: {k: statistics.median(v) for k, v in f.items()} for n, f in facts.items()},
    }
    (args.out / "benchmarks/results").mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks/results/results.json").write_text(json.dumps(results, indent=2))
    from benchmarks.report import plot, write_markdown

    plot(results, args.out / "benchmarks/results/throughput.png")
    write_markdown(results, args.out / "BENCHMARKS.md")
    print((args.out / "BENCHMARKS.md").read_text())
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
