"""Soak: hold ~70% of capacity for a long time and watch for drift and leaks.

Starts lstm-serve (or uses --target with --pid), measures capacity with a short closed-loop
run, then sends open-loop load at --fraction of it in windows, sampling the server's RSS and
open file descriptors after each. Exit 1 on any error, RSS growth over --max-rss-growth MiB,
fd growth over --max-fd-growth, or p99 drift (last window / first) over --max-drift.
    python -m benchmarks.soak --duration 3600 --json soak.json      (the long run)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.servers import ROOT, lstm_serve
from lstm_serving.client.client import LstmClient
from lstm_serving.client.load import generator, workload


def process_tree(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [pid, *map(int, children.stdout.split())]


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def open_fds(pids: list[int]) -> int:
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)


def start_server(repository: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = lstm_serve(repository)(port, 0)
    target = f"127.0.0.1:{port}"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            with LstmClient(target, timeout=1) as client:
                if client.health() == "SERVING":
                    return process, target
        except Exception:
            time.sleep(0.2)
    raise SystemExit("lstm-serve did not start")


def soak(args: argparse.Namespace, target: str, pid: int) -> dict[str, Any]:
    spec = workload.LoadSpec(
        target=target,
        model=args.model,
        batch_size=args.batch_size,
        time_steps=args.time,
        duration=3.0,
        warmup=1.0,
    )
    capacity = asyncio.run(generator.run_level(spec, concurrency=16, progress=False))
    rate = capacity.requests_per_second * args.fraction
    print(
        f"capacity {capacity.requests_per_second:.0f} req/s; holding {rate:.0f} req/s "
        f"for {args.duration:g} s",
        file=sys.stderr,
    )
    windows: list[dict[str, Any]] = []
    window_spec = workload.LoadSpec(
        target=target,
        model=args.model,
        batch_size=args.batch_size,
        time_steps=args.time,
        duration=args.window,
        warmup=0.0,
    )
    for i in range(max(1, int(args.duration / args.window))):
        result = asyncio.run(generator.run_level(window_spec, rate=rate, progress=False, seed=i))
        pids = process_tree(pid)
        windows.append(
            {
                "requests": result.requests,
                "errors": result.errors,
                "p50_ms": result.latency_ms["p50"],
                "p99_ms": result.latency_ms["p99"],
                "rss_mib": rss_mib(pids),
                "open_fds": open_fds(pids),
            }
        )
        print(
            f"window {i + 1}: {result.requests_per_second:.0f} req/s, p99 "
            f"{result.latency_ms['p99']:.2f} ms, errors {sum(result.errors.values())}, RSS "
            f"{windows[-1]['rss_mib']:.1f} MiB, fds {windows[-1]['open_fds']}",
            file=sys.stderr,
        )
    first, last = windows[0], windows[-1]
    report = {
        "capacity_rps": capacity.requests_per_second,
        "rate_rps": rate,
        "windows": windows,
        "errors": sum(sum(w["errors"].values()) for w in windows),
        "rss_growth_mib": last["rss_mib"] - first["rss_mib"],
        "fd_growth": last["open_fds"] - first["open_fds"],
        "p99_drift": last["p99_ms"] / first["p99_ms"] if first["p99_ms"] else 1.0,
    }
    report["passed"] = (
        report["errors"] == 0
        and report["rss_growth_mib"] <= args.max_rss_growth
        and report["fd_growth"] <= args.max_fd_growth
        and (args.max_drift == 0 or report["p99_drift"] <= args.max_drift)
    )
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--target", help="HOST:PORT of a running server (needs --pid)")
    parser.add_argument("--pid", type=int, help="its process id, for RSS and descriptors")
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="seed")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--time", type=int, default=10)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds under load")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per sample")
    parser.add_argument("--fraction", type=float, default=0.7, help="of measured capacity")
    parser.add_argument("--max-rss-growth", type=float, default=20.0, help="MiB")
    parser.add_argument("--max-fd-growth", type=int, default=10)
    parser.add_argument(
        "--max-drift", type=float, default=3.0, help="p99 last / first window (0: not checked)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    process = None
    if args.target:
        if args.pid is None:
            parser.error("--target needs --pid")
        target, pid = args.target, args.pid
    else:
        process, target = start_server(args.repository)
        pid = process.pid
    try:
        report = soak(args, target, pid)
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    print(json.dumps({k: v for k, v in report.items() if k != "windows"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
