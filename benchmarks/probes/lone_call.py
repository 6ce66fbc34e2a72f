"""Where a lone call's time goes: lstm-serve against the bare grpc.aio echo at one call in
flight, and each of lstm-serve's own parts of that call timed in process, without gRPC.

h2load sends B=1 Predict calls to the seed model one at a time to each server, rounds taking
turns; each run gives the mean latency and the server's CPU per call (all its threads, from
/proc). Then the parts lstm-serve adds to a call are timed alone, on the same request: the
decode, the data plane (checks, queue, the ONNX Runtime run inline, the rows split out), the
run by itself, the encode, and the metrics a call and its batch record. What the parts do not
account for of the gap to the echo is grpc.aio's per-call work beyond the echo's (the call's
peer and done callback for the answer budget, the handler's wrappers). On a small VM a
lone call's latency is bimodal by server process (where its threads are placed): compare
several processes, or pin them (benchmarks/NOTES.md).
Prints tables and writes JSON.
Usage: python -m benchmarks.probes.lone_call [--duration 4] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.h2load_bench import LONE, grpc_body, h2load, require_h2load
from benchmarks.servers import ROOT, Server, echo, lstm_serve, running
from lstm_serving.client.messages import predict_request
from lstm_serving.core.batching import BatchReport
from lstm_serving.core.dataplane import DataPlane
from lstm_serving.core.metrics import Metrics
from lstm_serving.core.registry import Registry
from lstm_serving.core.repository import load_models, serve_models
from lstm_serving.core.settings import Settings
from lstm_serving.protocols import lstm_v1

CALLS = 5000  # per in-process part


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_call_us(work: Callable[[], object], calls: int = CALLS) -> float:
    for _ in range(200):
        work()
    began = time.perf_counter()
    for _ in range(calls):
        work()
    return (time.perf_counter() - began) / calls * 1e6


async def parts() -> dict[str, float]:
    """lstm-serve's own parts of one lone B=1 call, each timed in process (us)."""
    settings, registry = Settings(repository=ROOT / "models"), Registry()
    serve_models(registry, load_models(settings), settings, Metrics())  # as lstm-serve does
    dataplane = DataPlane(registry, settings)
    model = dataplane.model("seed")
    x = np.random.default_rng(0).standard_normal((1, 10, 2)).astype(np.float32)
    request = lstm_v1.decode_predict(predict_request("seed", x), None)
    for _ in range(200):
        await dataplane.infer(request)
    result = await dataplane.infer(request)  # encoded below
    began = time.perf_counter()
    for _ in range(CALLS):
        await dataplane.infer(request)
    infer = (time.perf_counter() - began) / CALLS * 1e6
    await registry.stop()
    metrics = Metrics()
    counter = metrics.requests.labels("seed", "1", "Predict", "OK")
    duration = metrics.request_duration.labels("seed", "Predict")
    observer = metrics.batch_observer("seed", "CPUExecutionProvider")
    report = BatchReport(np.array([10], np.int32), [1e-4], [10], 1e-4)

    def record() -> None:
        counter.inc()
        duration.observe(1e-4)
        observer.batch_ran(report)

    lengths = np.array([10], np.int32)
    message = predict_request("seed", x)
    return {
        "decode": per_call_us(lambda: lstm_v1.decode_predict(message, None)),
        "data plane (checks, queue, run inline, split)": infer,
        "of which the ONNX Runtime run": per_call_us(
            lambda: model.run(x, lengths, ["last_hidden"], None)
        ),
        "encode": per_call_us(lambda: lstm_v1.encode_prediction(result)),
        "metrics (the call's, its batch's)": per_call_us(record),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/lone_call.json")
    args = parser.parse_args()
    require_h2load()
    runs: dict[str, list[dict[str, float]]] = {}
    echo_server = Server("echo", echo, metrics=False)
    serve = Server("lstm-serve", lstm_serve(ROOT / "models"))
    with (
        tempfile.TemporaryDirectory() as tmp,
        running(echo_server) as (echo_target, _, _),
        running(serve) as (target, _, _),
    ):
        body = grpc_body(LONE, Path(tmp))
        servers = {"echo": (echo_target, echo_server.pids[-1]),
                   "lstm-serve": (target, serve.pids[-1])}  # fmt: skip
        for _round in range(args.rounds):
            for name, (address, pid) in servers.items():
                before = cpu_seconds(pid)
                result = h2load(address, LONE, body, args.duration)
                spent = cpu_seconds(pid) - before  # includes h2load's warm-up second
                calls = result["requests_per_second"] * (args.duration + 1)
                result["cpu_us_per_call"] = spent / calls * 1e6
                runs.setdefault(name, []).append(result)
                print(f"{name}: {result['mean_ms']:.3f} ms", file=sys.stderr)
    rows = {
        name: {key: statistics.median(run[key] for run in done) for key in done[0]}
        for name, done in runs.items()
    }
    own = asyncio.run(parts())
    print("| server, one call in flight | calls/s | mean ms | server CPU per call (us) |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['requests_per_second']:,.0f} | {row['mean_ms']:.3f} | "
              f"{row['cpu_us_per_call']:.0f} |")  # fmt: skip
    print("\n| lstm-serve's own part of a lone call, in process | us |\n|---|---|")
    for part, us in own.items():
        print(f"| {part} | {us:.1f} |")
    data = {"rounds": args.rounds, "servers": rows, "runs": runs, "parts_us": own}
    args.json.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
