"""Small calls beside large answers: does one caller's 3 MB answer stall everyone else's?

lstm-serve serves the seed model and the large one (64 features -> 3 x LSTM(256)). h2load keeps
--streams calls in flight asking the large model for `sequence` at B=32, T=100 (3.3 MB per
answer), while one Python client makes back-to-back B=1 Predict calls to the seed model and
times each. Rounds take turns between the small calls alone and beside the large ones, so a
slow spell of a shared machine hits both; a row is the median of its rounds. The target
(issue 29): small calls' p99 beside the large answers at most 2x their p99 alone. Every run is
followed by the server's count of non-OK answers, which must be 0.
Prints a table and writes JSON.
Usage: python -m benchmarks.probes.large_answers [--duration 6] [--rounds 3] [--streams 2]
       [--json FILE] [-- lstm-serve flags]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.h2load_bench import V1, Case, h2load, require_h2load, server_side, server_totals
from benchmarks.servers import ROOT, Server, export_large, lstm_serve, running
from lstm_serving.client.messages import predict_request
from lstm_serving.proto.v1 import lstm_pb2_grpc as pb_grpc

LARGE_SHAPE = (32, 100, 64)  # B, T, features: `sequence` is 32 x 100 x 256 floats, 3.3 MB


def small_calls(target: str, seconds: float) -> dict[str, float]:
    """Back-to-back B=1 seed calls for `seconds`: their count and latency percentiles (ms)."""
    request = predict_request("seed", np.zeros((1, 10, 2), np.float32))
    with grpc.insecure_channel(target) as channel:
        predict = pb_grpc.LstmServiceStub(channel).Predict
        for _ in range(50):  # warm: the channel, the server's paths
            predict(request, timeout=30)
        took: list[float] = []
        until = time.perf_counter() + seconds
        while (began := time.perf_counter()) < until:
            predict(request, timeout=30)
            took.append(time.perf_counter() - began)
    ms = np.array(took) * 1e3
    return {"calls": float(len(ms)), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}  # fmt: skip


def beside_large(target: str, case: Case, body: Path, seconds: float) -> dict[str, float]:
    """Small calls while h2load keeps `case`'s large calls in flight (started first)."""
    large: dict[str, float] = {}
    loader = threading.Thread(target=lambda: large.update(h2load(target, case, body, seconds)))
    loader.start()
    time.sleep(1.5)  # h2load's connection and warm-up second
    small = small_calls(target, seconds - 2.5)
    loader.join()
    return small | {"large_per_second": large["requests_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=2, help="large calls in flight")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/large_answers.json")
    parser.add_argument("flags", nargs="*", help="extra lstm-serve flags (after --)")
    args = parser.parse_args()
    require_h2load()
    case = Case(V1 + "Predict", LARGE_SHAPE[0], args.streams, model="large")
    runs: dict[str, list[dict[str, float]]] = {"alone": [], "beside": []}
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "models"
        shutil.copytree(ROOT / "models", repository)
        print("exporting the large model (3 x 256, 64 features) ...", file=sys.stderr)
        export_large(repository)
        x = np.random.default_rng(0).standard_normal(LARGE_SHAPE).astype(np.float32)
        message = predict_request("large", x, output="sequence").SerializeToString()
        body = Path(tmp) / "large-sequence.bin"
        body.write_bytes(b"\0" + len(message).to_bytes(4, "big") + message)
        with running(Server("lstm-serve", lstm_serve(repository, *args.flags))) as (
            target,
            metrics_url,
            _,
        ):
            assert metrics_url is not None
            for _round in range(args.rounds):
                for setting in runs:
                    before = server_totals(metrics_url)
                    if setting == "alone":
                        result = small_calls(target, args.duration - 2.5)
                    else:
                        result = beside_large(target, case, body, args.duration)
                    result |= server_side(before, server_totals(metrics_url))
                    print(f"{setting}: p99 {result['p99_ms']:.2f} ms", file=sys.stderr)
                    runs[setting].append(result)
    rows = {
        setting: {key: statistics.median(run[key] for run in done) for key in done[0]}
        | {"not_ok": sum(run["not_ok"] for run in done)}
        for setting, done in runs.items()
    }
    ratio = rows["beside"]["p99_ms"] / rows["alone"]["p99_ms"]
    data = {"flags": args.flags, "rounds": args.rounds, "large_streams": args.streams,
            "answer_bytes": LARGE_SHAPE[0] * LARGE_SHAPE[1] * 256 * 4, "rows": rows,
            "p99_ratio": ratio, "runs": runs}  # fmt: skip
    print("| small B=1 calls | calls | p50 ms | p99 ms | max ms | large answers/s | non-OK |")
    print("|---|---|---|---|---|---|---|")
    for setting, row in rows.items():
        large = f"{row['large_per_second']:.1f}" if "large_per_second" in row else ""
        print(f"| {setting} | {row['calls']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
              f"{row['max_ms']:.1f} | {large} | {row['not_ok']:.0f} |")  # fmt: skip
    print(f"\np99 beside 3.3 MB answers / p99 alone: {ratio:.2f} (target <= 2)")
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    if any(row["not_ok"] for row in rows.values()):
        sys.exit("lstm-serve answered some requests with an error: see not_ok")


if __name__ == "__main__":
    main()
