"""What a batch on the worker thread costs while the event loop is busy: the GIL hand-off.

lstm-serve runs ONNX Runtime on a worker thread so the event loop keeps serving gRPC. The run
itself releases the GIL, but the thread needs it back to return its outputs, and a loaded
event loop gives it up only when it blocks or when Python's switch interval forces it. This
times the same seed-model run (B=8, T=10, one ONNX Runtime thread) on a thread while the main
thread idles, while it runs Python without pause (a saturated loop), and while another
process keeps a core busy (CPU contention without the GIL), at several switch intervals.
Prints a table and writes JSON.
Usage: python -m benchmarks.probes.gil_handoff [--runs 300] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.servers import ROOT, SEED
from lstm_serving.core.runtime import Model

BUSY_PYTHON = "while True: sum(range(1000))"


def timed_runs(model: Model, runs: int, busy_main: bool) -> tuple[float, float]:
    """Mean wall and thread-CPU microseconds of one run on a worker thread."""
    inputs = np.zeros((8, 10, model.architecture.input_size), np.float32)
    lengths = np.full(8, 10, np.int32)
    spent: list[float] = []

    def work() -> None:
        wall = cpu = 0.0
        for _ in range(runs):
            began, began_cpu = time.perf_counter(), time.thread_time()
            model.run(inputs, lengths, ["last_hidden"])
            wall += time.perf_counter() - began
            cpu += time.thread_time() - began_cpu
        spent.extend((wall / runs * 1e6, cpu / runs * 1e6))

    worker = threading.Thread(target=work)
    worker.start()
    while busy_main and worker.is_alive():
        sum(range(1000))  # Python bytecode, never blocking: what a saturated event loop does
    worker.join()
    return spent[0], spent[1]


def markdown(data: dict[str, Any]) -> list[str]:
    """The runs as a Markdown table (also BENCHMARKS.md's, via report.py)."""
    lines = [
        "| switch interval | main thread | run, wall us | run, thread CPU us |",
        "|---|---|---|---|",
    ]
    for row in data["rows"]:
        lines.append(f"| {row['switch_interval_ms']} ms | {row['main_thread']} | "
                     f"{row['wall_us']:,.0f} | {row['thread_cpu_us']:,.0f} |")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/gil_handoff.json")
    args = parser.parse_args()
    model = Model(SEED, "seed", 1, "cpu", 1)
    model.run(np.zeros((8, 10, 2), np.float32), np.full(8, 10, np.int32), ["last_hidden"])
    rows = []
    for interval_ms in (5.0, 1.0, 0.5, 0.1):
        sys.setswitchinterval(interval_ms / 1000)
        for main_thread in ("idle", "busy with Python", "idle, another process busy"):
            other = None
            if main_thread.endswith("process busy"):
                other = subprocess.Popen([sys.executable, "-c", BUSY_PYTHON])
                time.sleep(0.3)
            try:
                wall, cpu = timed_runs(model, args.runs, main_thread == "busy with Python")
            finally:
                if other is not None:
                    other.kill()
                    other.wait()
            rows.append({"switch_interval_ms": interval_ms, "main_thread": main_thread,
                         "wall_us": wall, "thread_cpu_us": cpu})  # fmt: skip
            print(f"{interval_ms} ms, {main_thread}: {wall:.0f} us", file=sys.stderr)
    data = {"runs": args.runs, "rows": rows}
    print("\n".join(markdown(data)))
    args.json.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
