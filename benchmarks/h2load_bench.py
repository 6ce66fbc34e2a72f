"""lstm-serve against the bare grpc.aio echo server, with h2load as the client.

h2load (nghttp2's native HTTP/2 load generator, Debian's nghttp2-client) replays one
pre-encoded gRPC request (5-byte frame header + protobuf) on one connection with C streams in
flight, costing the client side far less CPU than a Python load generator, so the ratios are
the servers'. h2load counts HTTP 200s, and gRPC reports errors in trailers, so every lstm-serve
run is followed by a server-side count of non-OK answers, which must be 0.
Prints a table and writes JSON.
Usage: python benchmarks/h2load_bench.py [--duration 5] [--json FILE] [-- lstm-serve flags]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from benchmarks.servers import ROOT, Server, echo, lstm_serve, running
from lstm_serving.client.messages import predict_request

CASES = ((1, 1), (1, 64), (32, 16))  # (sequences per request, streams in flight)
PATH = "/lstm.v1.LstmService/Predict"


def grpc_body(batch: int, directory: Path) -> Path:
    """One Predict of `batch` sequences of 10 steps, framed as gRPC sends it."""
    x = np.random.default_rng(0).standard_normal((batch, 10, 2)).astype(np.float32)
    message = predict_request("seed", x).SerializeToString()
    path = directory / f"predict-{batch}.bin"
    path.write_bytes(b"\0" + len(message).to_bytes(4, "big") + message)
    return path


def h2load(target: str, body: Path, streams: int, duration: float) -> dict[str, float]:
    done = subprocess.run(
        ["h2load", "-c", "1", "-t", "1", "-m", str(streams), "-D", str(round(duration)),
         "--warm-up-time", "1", "-d", str(body), "-H", "content-type: application/grpc",
         "-H", "te: trailers", f"http://{target}{PATH}"],
        capture_output=True, text=True, check=True, timeout=duration + 60,
    )  # fmt: skip
    out = done.stdout
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    counts = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    assert rate and counts and mean, out
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[mean.group(2)]
    assert counts.group(1) == counts.group(2), out  # every request answered HTTP 200
    return {
        "requests_per_second": float(rate.group(1)),
        "mean_ms": float(mean.group(1)) * scale,
        "requests": float(counts.group(1)),
    }


def not_ok(metrics_url: str | None) -> float:
    """Answers the server counted with a code other than OK."""
    if metrics_url is None:
        return 0.0
    with urllib.request.urlopen(metrics_url, timeout=10) as page:
        text = page.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("lstm_requests_total{") and 'code="OK"' not in line
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=ROOT / "docs/h2load.json")
    parser.add_argument("flags", nargs="*", help="extra lstm-serve flags (after --)")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("h2load not found: apt-get install nghttp2-client")
    servers = [
        Server("echo", echo, metrics=False),
        Server("lstm-serve", lstm_serve(ROOT / "models", *args.flags)),
    ]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        bodies = {batch: grpc_body(batch, Path(tmp)) for batch in {b for b, _ in CASES}}
        for server in servers:
            with running(server) as (target, metrics_url, _):
                for batch, streams in CASES:
                    result = h2load(target, bodies[batch], streams, args.duration)
                    rows.append({"server": server.name, "batch": batch, "streams": streams,
                                 **result, "not_ok": not_ok(metrics_url)})  # fmt: skip
    echo_rows = {(r["batch"], r["streams"]): r for r in rows if r["server"] == "echo"}
    print("| server | B | streams | requests/s | mean ms | x echo | non-OK |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        row["vs_echo"] = (
            row["requests_per_second"]
            / echo_rows[row["batch"], row["streams"]]["requests_per_second"]
        )
        print(f"| {row['server']} | {row['batch']} | {row['streams']} | "
              f"{row['requests_per_second']:.0f} | {row['mean_ms']:.3f} | {row['vs_echo']:.2f} | "
              f"{row['not_ok']:.0f} |")  # fmt: skip
    args.json.write_text(json.dumps({"flags": args.flags, "rows": rows}, indent=2) + "\n")
    if any(row["not_ok"] for row in rows):
        sys.exit("lstm-serve answered some requests with an error: see not_ok")


if __name__ == "__main__":
    main()
