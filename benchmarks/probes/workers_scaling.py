"""lstm-serve's --workers scaling with h2load as the client, for a machine with cores to spare.

Each worker count gets its own server (the seed model, defaults otherwise). h2load opens
--connections connections, which SO_REUSEPORT spreads over the workers, each with --streams
streams in flight, and drives B=1 and B=32 Predict. Every run is followed by the server's
count of non-OK answers over all its workers, which must be 0. On a 2-core machine, with the
client on it, this shows little; issue 13 asks for it on 16 cores or so.
Prints a table and writes JSON.
Usage: python -m benchmarks.probes.workers_scaling [--workers 1,2,4,8] [--connections 32]
       [--streams 8] [--threads 4] [--duration 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.h2load_bench import (
    V1,
    Case,
    grpc_body,
    h2load,
    require_h2load,
    server_side,
    server_totals,
)
from benchmarks.servers import ROOT, Server, lstm_serve, running


def markdown(data: dict[str, Any]) -> list[str]:
    """The runs as a Markdown table: each worker count against the first."""
    lines = [
        f"{data['cpus']} CPUs; h2load: {data['connections']} connections x {data['streams']} "
        f"streams, {data['h2load_threads']} threads, {data['duration_s']:g} s per run.",
        "",
        "| workers | case | calls/s | sequences/s | mean ms | x 1 worker | non-OK "
        "| server: batch, run ms, queue ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    one = {row["case"]: row for row in data["rows"] if row["workers"] == data["rows"][0]["workers"]}
    for row in data["rows"]:
        ratio = row["requests_per_second"] / one[row["case"]]["requests_per_second"]
        lines.append(f"| {row['workers']} | {row['case']} | {row['requests_per_second']:,.0f} | "
                     f"{row['requests_per_second'] * row['batch']:,.0f} | {row['mean_ms']:.2f} | "
                     f"{ratio:.2f} | {row['not_ok']:.0f} | {row['server_batch']:.1f}, "
                     f"{row['run_ms']:.2f}, {row['queue_ms']:.2f} |")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts, comma-separated")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--streams", type=int, default=8, help="in flight per connection")
    parser.add_argument(
        "--threads", type=int, default=4, help="h2load's threads, at most one per connection"
    )
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks/results/workers_scaling.json"
    )
    args = parser.parse_args()
    require_h2load()
    cases = tuple(
        Case(V1 + "Predict", batch, args.streams, connections=args.connections) for batch in (1, 32)
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bodies = {case: grpc_body(case, Path(tmp)) for case in cases}
        for workers in (int(n) for n in args.workers.split(",")):
            server = Server(
                f"{workers} workers", lstm_serve(ROOT / "models", "--workers", str(workers))
            )
            with running(server) as (target, metrics_url, ready_s):
                assert metrics_url is not None
                # The readiness check reached one worker; the others start alongside it, and
                # a connection h2load opens before one listens goes to another.
                time.sleep(max(2.0, 2 * ready_s))
                for case in cases:
                    before = server_totals(metrics_url)
                    threads = min(args.threads, args.connections)
                    result = h2load(target, case, bodies[case], args.duration, threads)
                    result |= server_side(before, server_totals(metrics_url))
                    print(f"{workers} workers, {case.name}: {result['requests_per_second']:.0f}/s",
                          file=sys.stderr)  # fmt: skip
                    rows.append({"workers": workers, "case": case.name, "batch": case.batch,
                                 **result})  # fmt: skip
    data = {"cpus": os.cpu_count(), "connections": args.connections, "streams": args.streams,
            "h2load_threads": args.threads, "duration_s": args.duration, "rows": rows}  # fmt: skip
    print("\n".join(markdown(data)))
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    if any(row["not_ok"] for row in rows):
        sys.exit("lstm-serve answered some requests with an error: see not_ok")


if __name__ == "__main__":
    main()
