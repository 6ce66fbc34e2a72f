"""What recording the metrics costs per batch, next to the ONNX Runtime run it describes.

Times what the batcher records per batch plus what the servicer records per call, for a
batch of B sequences sent as one request or as B requests, in-process and in
prometheus-client's multiprocess mode (used with --workers N), against one ONNX Runtime run
(1 thread) of the seed model on the same batch. A request itself costs the Python gRPC server
roughly 300-500 us (DESIGN.md), so the per-request column is the one to compare with that.
Prints a table and writes JSON.
Usage: python -m benchmarks.probes.metrics_overhead [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BATCHES = (1, 8, 64)
REPEATS = 2000


def per_call_us(call: Callable[[], object], repeats: int = REPEATS) -> float:
    for _ in range(50):
        call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats * 1e6


def measure() -> dict[str, object]:
    """Runs in a child process, so the multiprocess mode is chosen before the import."""
    from lstm_serving.core.batching import BatchReport
    from lstm_serving.core.metrics import Metrics
    from lstm_serving.core.runtime import Model

    metrics = Metrics()
    model = Model(ROOT / "models/seed/1/model.onnx", "seed", 1, "cpu", 1)
    observer = metrics.batch_observer("seed", model.provider)
    rows = []
    for batch in BATCHES:
        lengths = np.full(batch, 10, np.int32)
        x = np.random.default_rng(0).standard_normal((batch, 10, 2)).astype(np.float32)
        for requests in sorted({1, batch}):  # one request of B sequences, or B of one each

            def record(lengths: np.ndarray = lengths, requests: int = requests) -> None:
                observer.queue_changed(0)
                observer.batch_ran(BatchReport(lengths, [1e-4] * requests, [10] * requests, 1e-3))
                for _ in range(requests):  # the servicer's per-call counter and histogram
                    metrics.requests.labels("seed", "1", "Predict", "OK").inc()
                    metrics.request_duration.labels("seed", "Predict").observe(1e-3)

            run_us = per_call_us(lambda: model.run(x, lengths, ["last_hidden"]), 500)  # noqa: B023
            metrics_us = per_call_us(record)
            rows.append(
                {
                    "batch": batch,
                    "requests": requests,
                    "ort_run_us": run_us,
                    "metrics_us": metrics_us,
                    "metrics_us_per_request": metrics_us / requests,
                }
            )
    return {"multiprocess": "PROMETHEUS_MULTIPROC_DIR" in os.environ, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure()))
        return 0
    results = []
    for multiprocess in (False, True):
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        with tempfile.TemporaryDirectory() as directory:
            if multiprocess:
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            out = subprocess.run(
                [sys.executable, __file__, "--child"],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
        results.append(json.loads(out.stdout))
    print(
        f"{'mode':<13}{'batch':>6}{'requests':>9}{'ORT run us':>12}{'metrics us':>12}"
        f"{'per request':>12}"
    )
    for result in results:
        mode = "multiprocess" if result["multiprocess"] else "in-process"
        for row in result["rows"]:
            print(
                f"{mode:<13}{row['batch']:>6}{row['requests']:>9}{row['ort_run_us']:>12.1f}"
                f"{row['metrics_us']:>12.1f}{row['metrics_us_per_request']:>12.1f}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
