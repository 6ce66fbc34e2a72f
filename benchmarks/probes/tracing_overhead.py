"""What OpenTelemetry tracing costs: lstm-serve without tracing and with --otlp-endpoint
(spans exported to a local OTLP/gRPC receiver in this process), interleaved, the same load
from `lstm-client load` (lstm.v1 Predict, B=1 T=10, 16 in flight). Off, the handlers are
registered unwrapped, so "off" is the server as it is without the feature.
Prints a table and writes JSON.
Usage: python -m benchmarks.probes.tracing_overhead [--duration 4] [--repeats 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.helpers import CLIENT, free_port, start, stop, wait_serving

ROOT = Path(__file__).resolve().parents[2]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request: Any, context: Any) -> Any:
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def run(args: list[str], duration: float) -> dict[str, float]:
    port = free_port()
    server = start(ROOT / "models", port, *args)
    try:
        wait_serving(server, port)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run(
                [
                    CLIENT,
                    "--target",
                    f"127.0.0.1:{port}",
                    "load",
                    "seed",
                    "--concurrency",
                    "16",
                    "--duration",
                    str(duration),
                    "--warmup",
                    "1",
                    "--json-file",
                    out.name,
                ],
                check=True,
                capture_output=True,
            )
            (level,) = json.loads(Path(out.name).read_text())["levels"]
    finally:
        stop(server)
    return {
        "requests_per_second": level["requests_per_second"],
        "p50_ms": level["latency_ms"]["p50"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks/results/tracing_overhead.json"
    )
    args = parser.parse_args()
    collector = grpc.server(futures.ThreadPoolExecutor(2))
    receiver = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, collector)  # type: ignore[no-untyped-call]
    collector_port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    modes = {"off": [], "on": ["--otlp-endpoint", f"http://127.0.0.1:{collector_port}"]}
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for _ in range(args.repeats):
        for mode, flags in modes.items():
            runs[mode].append(run(flags, args.duration))
    collector.stop(0)
    report = {
        mode: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for mode, results in runs.items()
    }
    report["on_vs_off"] = {
        "throughput": report["on"]["requests_per_second"] / report["off"]["requests_per_second"],
        "spans_received": receiver.spans,
    }
    print("| tracing | requests/s | p50 ms |\n|---|---|---|")
    for mode in modes:
        print(
            f"| {mode} | {report[mode]['requests_per_second']:.0f} | {report[mode]['p50_ms']:.2f} |"
        )
    ratio = report["on_vs_off"]["throughput"]
    print(f"on / off throughput: {ratio:.2f}x; spans received: {receiver.spans}")
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
