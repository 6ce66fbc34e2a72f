"""Turns benchmarks/results/results.json into BENCHMARKS.md (tables, targets, ratios) and a PNG
plot; the tables of benchmarks/results/h2load.json and gil_handoff.json and benchmarks/NOTES.md
follow them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import h2load_bench
from benchmarks.probes import gil_handoff

ROOT = Path(__file__).resolve().parent.parent

H2LOAD_SECTION = """## Per-call cost with a native client (h2load)

`benchmarks/h2load_bench.py` (`benchmarks/results/h2load.json`): the bare echo and lstm-serve
(defaults) driven by h2load over one connection (one row: four) with pre-encoded bodies, so the
client costs far less CPU than `lstm-client load` and the ratios are the servers'. A streaming
row sends 100 messages on each stream and counts messages. The lone-call row runs with both
servers pinned to one core and h2load on the other: unpinned, a lone call's latency on this VM
depends on where the scheduler puts a server's threads (benchmarks/NOTES.md). Around each
lstm-serve run the server's metrics are read back: its count of non-OK answers, and its mean
batch, ONNX Runtime run and queue wait during the run. The two servers take turns on each case,
3 rounds of 5 s after 1 s of warm-up; a row is the median of its rounds, its ratio to the echo
the median of the rounds' ratios. Raw ONNX Runtime (seed B=1 and B=32, the large model's B=16)
is timed after the servers, in the same run, and issue 29's targets are checked against this
run's numbers."""

GIL_SECTION = """## A batch on the worker thread while the event loop is busy

`benchmarks/probes/gil_handoff.py` (`benchmarks/results/gil_handoff.json`): the same seed-model run
(B=8, T=10, one ONNX Runtime thread) on a worker thread, timed while the main thread idles, runs
Python without pause (as a saturated event loop does), or idles while another process keeps a
core busy."""


def _row(results: dict[str, Any], scenario: str, server: str, level: int) -> dict[str, Any]:
    for row in results["rows"]:
        if (row["scenario"], row["server"], row["level"]) == (scenario, server, level):
            return dict(row)
    return {"failed": "not run"}


def targets(results: dict[str, Any]) -> list[tuple[str, float | None, float, str]]:
    """(target, measured ratio or value, threshold, how it is measured); None: not measured."""

    def get(scenario: str, server: str, level: int, key: str) -> float | None:
        value = _row(results, scenario, server, level).get(key)
        return float(value) if value is not None else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    limits = results["limits_sequences_per_second"]
    serve = "lstm-serve"
    b1 = "B=1 unary"
    servers = results["servers"]
    return [
        (
            "B=1, c=64: lstm-serve req/s / echo ceiling",
            ratio(
                get(b1, serve, 64, "requests_per_second"),
                get(b1, "echo", 64, "requests_per_second"),
            ),
            0.8,
            ">=",
        ),
        (
            "B=1, c=64: lstm-serve req/s / MLServer",
            ratio(
                get(b1, serve, 64, "requests_per_second"),
                get(b1, "mlserver", 64, "requests_per_second"),
            ),
            3.0,
            ">=",
        ),
        (
            "B=1, c=1: lstm-serve p50 / echo p50",
            ratio(get(b1, serve, 1, "p50_ms"), get(b1, "echo", 1, "p50_ms")),
            1.5,
            "<=",
        ),
        (
            "B=32, c=16: lstm-serve seq/s / MLServer",
            ratio(
                get("B=32 unary", serve, 16, "sequences_per_second"),
                get("B=32 unary", "mlserver", 16, "sequences_per_second"),
            ),
            3.0,
            ">=",
        ),
        (
            "B=32, c=16: lstm-serve seq/s / raw ONNX Runtime (B=32, 2 threads)",
            ratio(
                get("B=32 unary", serve, 16, "sequences_per_second"),
                limits.get("seed B=32, 2 threads"),
            ),
            0.5,
            ">=",
        ),
        (
            "v2 stream B=1 msg/s / unary echo ceiling (c=64)",
            ratio(
                get("B=1 v2 stream", serve, 64, "requests_per_second"),
                get(b1, "echo", 64, "requests_per_second"),
            ),
            1.0,
            ">=",
        ),
        (
            "sequences: steps/s, 256 sequences of 1-step chunks on streams / unary echo (c=64)",
            ratio(
                get("sequences, 1-step chunks on streams", serve, 256, "requests_per_second"),
                get(b1, "echo", 64, "requests_per_second"),
            ),
            1.5,
            ">=",
        ),
        (
            "large model: lstm-serve seq/s / raw ONNX Runtime (B=16, 2 threads)",
            ratio(
                get("large B=16", serve, 4, "sequences_per_second"),
                limits.get("large B=16, 2 threads"),
            ),
            0.9,
            ">=",
        ),
        ("lstm-serve RSS per worker, MiB", servers.get(serve, {}).get("rss_mib"), 150, "<="),
        ("lstm-serve start to SERVING, s", servers.get(serve, {}).get("start_s"), 2.0, "<="),
    ]


def write_markdown(results: dict[str, Any], path: Path) -> None:
    machine = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Made by `make bench` (`python -m benchmarks.run`): every server on the same machine, in "
        "one run, driven by the same load generator (`lstm-client load`), the servers "
        f"interleaved (their order rotates each repeat); {results['repeats']} repeats of "
        f"{results['duration_s']:g} s per level after 1 s of warm-up; medians, with the spread "
        "of requests/s (min-max over repeats). The load generator shares the machine with the "
        "server, as it would in a one-box load test.",
        "",
        f"Machine: {machine['cpus']} CPUs ({machine['processor']}), Python {machine['python']}. "
        "Seed model: 2 -> LSTM(64) -> LSTM(32), T=10. Large model: 64 -> 3 x LSTM(256), T=100.",
        "",
        "## Targets",
        "",
        "| target | measured | goal | met |",
        "|---|---|---|---|",
    ]
    for name, value, threshold, op in targets(results):
        if value is None:
            lines.append(f"| {name} | not measured | {op} {threshold:g} | - |")
            continue
        met = value >= threshold if op == ">=" else value <= threshold
        lines.append(f"| {name} | {value:.2f} | {op} {threshold:g} | {'yes' if met else 'NO'} |")
    lines += [
        "",
        "## The limit: ONNX Runtime in process",
        "",
        "| case | sequences/s |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:,.0f} |" for k, v in results["limits_sequences_per_second"].items()]
    lines += [
        "",
        "## Servers",
        "",
        "| scenario | server | concurrency | req/s | seq/s | spread req/s | p50 ms | "
        "p99 ms | errors | server side | verified |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        if "failed" in row:
            lines.append(
                f"| {row['scenario']} | {row['server']} | {row['level']} | failed: "
                f"{row['failed'][:80]!r} |||||||| "
            )
            continue
        split = row.get("server_side")
        server_side = (
            (
                f"queue {split['queue_ms']:.2f} ms, run {split['compute_ms_per_batch']:.2f}"
                f" ms, batch {split['mean_batch_size']:.1f}"
            )
            if split
            else ""
        )
        check = row.get("verify")
        verified = f"{check['wrong']} wrong of {check['checked']}" if check else ""
        lo, hi = row["spread"]
        lines.append(
            f"| {row['scenario']} | {row['server']} | {row['level']} | "
            f"{row['requests_per_second']:,.0f} | {row['sequences_per_second']:,.0f} | "
            f"{lo:,.0f}-{hi:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['errors']} | {server_side} | {verified} |"
        )
    lines += ["", "| server | start to ready, s | RSS, MiB (all processes) |", "|---|---|---|"]
    lines += [
        f"| {n} | {f['start_s']:.2f} | {f['rss_mib']:.0f} |" for n, f in results["servers"].items()
    ]
    lines += ["", "![throughput and p99 vs concurrency](benchmarks/results/throughput.png)", ""]
    for section, module, json_file in (  # `make bench` runs these two first
        (H2LOAD_SECTION, h2load_bench, "benchmarks/results/h2load.json"),
        (GIL_SECTION, gil_handoff, "benchmarks/results/gil_handoff.json"),
    ):
        if (ROOT / json_file).exists():
            data = json.loads((ROOT / json_file).read_text())
            lines += [section, "", *module.markdown(data), ""]
    notes = ROOT / "benchmarks/NOTES.md"
    if notes.exists():
        lines += [notes.read_text()]
    path.write_text("\n".join(lines) + "\n")


def plot(results: dict[str, Any], path: Path) -> None:
    # matplotlib comes with the bench extra, which `make bench` installs and `make test` does not
    import matplotlib  # pyright: ignore[reportMissingImports]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pyright: ignore[reportMissingImports]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = [r for r in results["rows"] if r["scenario"] == "B=1 unary" and "failed" not in r]
    for server in dict.fromkeys(r["server"] for r in rows):
        mine = sorted((r for r in rows if r["server"] == server), key=lambda r: r["level"])
        levels = [r["level"] for r in mine]
        left.plot(levels, [r["requests_per_second"] for r in mine], marker="o", label=server)
        right.plot(levels, [r["p99_ms"] for r in mine], marker="o", label=server)
    for axis, title, unit in (
        (left, "Throughput, B=1, T=10", "requests/s"),
        (right, "p99 latency, B=1, T=10", "ms"),
    ):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrency (closed loop)")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    data = json.loads((ROOT / "benchmarks/results/results.json").read_text())
    plot(data, ROOT / "benchmarks/results/throughput.png")
    write_markdown(data, ROOT / "BENCHMARKS.md")
    sys.exit(0)
