"""Server-held sequences in process against the shared Redis store (--sequence-store).

    python -m benchmarks.shared_sequences [--sequences 256] [--duration 10]     (make bench)

256 sequences of 1-step unary chunks, each sequence stepping as fast as its answers come:
on one replica with the in-process store, then on two replicas sharing a Redis (Debian's
redis-server, started here), each step going to the replica the other step did not (the
worst case for affinity: every step moves). Prints steps/s and p50/p99 per case, and their
ratio, and writes benchmarks/results/shared_sequences.json. Every answer must be OK.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from lstm_serving.client.client import AsyncLstmClient
from tests.helpers import (
    ROOT,
    SEED_REPOSITORY,
    RedisServer,
    free_port,
    start,
    stop,
    wait_serving,
)

RESULTS = ROOT / "benchmarks/results/shared_sequences.json"


async def drive(ports: list[int], sequences: int, duration: float) -> dict[str, float]:
    """Each sequence steps in a loop, alternating over `ports`; steps/s and latencies."""
    clients = [AsyncLstmClient(f"127.0.0.1:{p}") for p in ports]
    x = np.random.default_rng(0).standard_normal((1, 1, 2)).astype(np.float32)
    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + duration

    async def one(i: int) -> None:
        nonlocal errors
        step = 0
        while time.monotonic() < end:
            began = time.perf_counter()
            client = clients[(i + step) % len(clients)]
            try:
                await client.predict("seed", x, sequence_id=f"b{i}", sequence_start=step == 0)
            except Exception:
                errors += 1
            latencies.append(time.perf_counter() - began)
            step += 1
        await clients[0].predict("seed", x, sequence_id=f"b{i}", sequence_end=True)

    began = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(sequences)))
    took = time.monotonic() - began
    for client in clients:
        await client.close()
    ms = np.array(latencies) * 1000
    return {
        "steps_per_second": len(latencies) / took,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sequences", type=int, default=256)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (Debian package redis-server)")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        redis = RedisServer(Path(directory))
        redis.start()
        store = ("--sequence-store", redis.url)
        try:
            for case, replicas, flags in (
                ("in process, 1 replica", 1, ()),
                ("redis store, 2 replicas", 2, store),
            ):
                ports = [free_port() for _ in range(replicas)]
                servers = [start(SEED_REPOSITORY, p, *flags) for p in ports]
                try:
                    for server, port in zip(servers, ports, strict=True):
                        wait_serving(server, port)
                    results[case] = asyncio.run(drive(ports, args.sequences, args.duration))
                finally:
                    for server in servers:
                        stop(server)
        finally:
            redis.stop()
    print(f"{'case':26} {'steps/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for case, r in results.items():
        print(
            f"{case:26} {r['steps_per_second']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
            f"{r['errors']:7.0f}"
        )
    shared, alone = results["redis store, 2 replicas"], results["in process, 1 replica"]
    ratio = shared["steps_per_second"] / alone["steps_per_second"]
    print(f"redis store on 2 replicas / in process on 1: {ratio:.2f}x steps/s")
    RESULTS.write_text(json.dumps({"sequences": args.sequences, "cases": results}, indent=2))
    if any(r["errors"] for r in results.values()):
        raise SystemExit("some steps failed")


if __name__ == "__main__":
    main()
