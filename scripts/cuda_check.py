"""Proves the CUDA execution provider path on a machine with an NVIDIA GPU and onnxruntime-gpu.

Starts a real lstm-serve (in process, --device cuda) on the seed model, checks that
DescribeModel reports CUDAExecutionProvider, compares its answers on mixed-length batches with
ONNX Runtime on the CPU (tolerance 1e-4 absolute), measures how far batching moves a CUDA answer
(cuDNN does not promise bit-identical rows across batch sizes), and times raw CPU vs CUDA runs.
Usage: python scripts/cuda_check.py [--json FILE], with lstm-serving installed (pip install
-e '.[server]', onnxruntime-gpu in place of onnxruntime). Exit 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lstm_serving.client.client import AsyncLstmClient
from lstm_serving.core.runtime import Model
from lstm_serving.core.settings import Settings
from lstm_serving.server.app import LstmServer

ROOT = Path(__file__).resolve().parent.parent

TOLERANCE = 1e-4
SEED = ROOT / "models/seed/1/model.onnx"


def _requests(rng: np.random.Generator, count: int) -> list[tuple[np.ndarray, list[int]]]:
    out = []
    for _ in range(count):
        batch, steps = int(rng.integers(1, 9)), int(rng.integers(1, 51))
        x = rng.standard_normal((batch, steps, 2)).astype(np.float32)
        out.append((x, rng.integers(1, steps + 1, size=batch).tolist()))
    return out


async def check_server(report: dict[str, object], device: str) -> bool:
    server = LstmServer(
        Settings(
            repository=ROOT / "models",
            host="127.0.0.1",
            port=0,
            device=device,
            max_queue_delay_ms=2.0,
        )
    )
    await server.start()
    await server.load()
    cpu = Model(SEED, "seed", 1, "cpu", 4)
    requests = _requests(np.random.default_rng(0), 100)
    try:
        async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
            provider = (await client.describe("seed")).execution_provider
            alone = [await client.predict("seed", x, lengths=n, output="both") for x, n in requests]
            together = await asyncio.gather(
                *(client.predict("seed", x, lengths=n, output="both") for x, n in requests)
            )
    finally:
        await server.stop(grace=1)
    cpu_diff = batch_diff = 0.0
    exact = 0
    for (x, n), a, b in zip(requests, alone, together, strict=True):
        ref = cpu.run(x, np.array(n, np.int32), ["last_hidden", "sequence"])
        assert a.last_hidden is not None and a.sequence is not None
        assert b.last_hidden is not None and b.sequence is not None
        cpu_diff = max(
            cpu_diff,
            float(np.abs(a.last_hidden - ref["last_hidden"]).max()),
            float(np.abs(a.sequence - ref["sequence"]).max()),
        )
        d = max(
            float(np.abs(a.last_hidden - b.last_hidden).max()),
            float(np.abs(a.sequence - b.sequence).max()),
        )
        batch_diff = max(batch_diff, d)
        exact += d == 0.0
    report.update(
        provider=provider,
        cuda_vs_cpu_max_abs_diff=cpu_diff,
        batched_vs_alone_max_abs_diff=batch_diff,
        batched_bit_exact=f"{exact}/100",
    )
    expected = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    return provider == expected and cpu_diff <= TOLERANCE


def time_runs(report: dict[str, object], device: str) -> None:
    rows = []
    cpu, cuda = Model(SEED, "seed", 1, "cpu", 16), Model(SEED, "seed", 1, device, 1)
    for batch, steps in ((1, 10), (32, 10), (256, 10), (256, 100)):
        x = np.random.default_rng(1).standard_normal((batch, steps, 2)).astype(np.float32)
        lengths = np.full(batch, steps, np.int32)
        row: dict[str, object] = {"batch": batch, "time": steps}
        for name, model in (("cpu", cpu), ("cuda", cuda)):
            for _ in range(5):
                model.run(x, lengths, ["last_hidden"])
            n, start = 50, time.perf_counter()
            for _ in range(n):
                model.run(x, lengths, ["last_hidden"])
            row[f"{name}_ms"] = round((time.perf_counter() - start) / n * 1000, 3)
        rows.append(row)
    report["seed_model_run_ms"] = rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of this script")
    args = parser.parse_args()
    report: dict[str, object] = {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
    }
    ok = asyncio.run(check_server(report, args.device))
    time_runs(report, args.device)
    report["passed"] = ok
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
