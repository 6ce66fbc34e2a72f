"""`lstm-client load`: run each level, then report it (a table, the server's own split of
queue wait and compute scraped from /metrics, and the --verify check), or JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from lstm_serving.client.load import generator, workload
from lstm_serving.client.load.generator import LevelResult
from lstm_serving.client.load.sequences import SEQUENCE_PROTOCOLS
from lstm_serving.contract import LAST_HIDDEN, OUTPUT_CHOICES
from lstm_serving.tables import format_table


def add_load_arguments(load: argparse.ArgumentParser) -> None:
    load.add_argument("name")
    load.add_argument(
        "--concurrency",
        default="1,16,64",
        help="closed-loop levels, e.g. 1,16,64 (for v2-stream: in flight)",
    )
    load.add_argument("--rate", help="open-loop levels in requests/s, e.g. 500,2000")
    load.add_argument(
        "--protocol",
        choices=sorted({*workload.PROTOCOLS, *SEQUENCE_PROTOCOLS}),
        default="lstm",
        help="lstm-stream: with --sequences only",
    )
    load.add_argument(
        "--sequences",
        type=int,
        default=0,
        help="server-held sequences at once (the levels of --concurrency are ignored): each "
        "stepped --chunk steps a call for --time steps, then the next one starts",
    )
    load.add_argument("--chunk", type=int, default=1, help="time steps per call, --sequences")
    load.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    load.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    load.add_argument("--batch-size", type=int, default=1, help="sequences per request")
    load.add_argument("--time", type=int, default=10, help="time steps per sequence")
    load.add_argument(
        "--lengths", default="full", help="full, uniform:LO:HI or list:A,B,... (per sequence)"
    )
    load.add_argument("--output", choices=tuple(OUTPUT_CHOICES), default=LAST_HIDDEN)
    load.add_argument(
        "--channels", type=int, default=1, help="gRPC channels (connections) per process"
    )
    load.add_argument("--processes", type=int, default=1, help="client processes")
    load.add_argument("--metrics-url", help="server's /metrics: adds queue vs compute split")
    load.add_argument(
        "--verify",
        type=Path,
        metavar="MODEL.onnx",
        help="check sampled answers against ONNX Runtime on this model file "
        "(needs the verify extra: pip install 'lstm-serving[verify]')",
    )
    load.add_argument(
        "--features", type=int, help="input features (default: asked with lstm.v1 DescribeModel)"
    )
    load.add_argument("--json-file", type=Path, help="also write the results as JSON here")


def run_load(args: argparse.Namespace, features: int, vocabulary: int = 0) -> int:
    """`lstm-client load`; `vocabulary` > 0 for a text model (random token ids are sent)."""
    try:
        levels = (
            [(0, float(r)) for r in args.rate.split(",")]
            if args.rate
            else [(int(c), 0.0) for c in args.concurrency.split(",")]
        )
        workload.parse_lengths(args.lengths, args.time, 1, np.random.default_rng())
    except ValueError as exc:
        print(f"lstm-client: bad --concurrency, --rate or --lengths: {exc}", file=sys.stderr)
        return 2
    if args.sequences:
        if args.rate or args.verify or args.chunk < 1:
            print(
                "lstm-client: --sequences runs a closed loop of --chunk >= 1 steps a call "
                "(no --rate, no --verify)",
                file=sys.stderr,
            )
            return 2
        levels = [(args.sequences, 0.0)]
    elif args.protocol not in workload.PROTOCOLS:
        print(f"lstm-client: --protocol {args.protocol} needs --sequences", file=sys.stderr)
        return 2
    spec = workload.LoadSpec(
        target=args.target,
        model=args.name,
        protocol=args.protocol,
        batch_size=args.batch_size,
        time_steps=args.time,
        lengths=args.lengths,
        features=features,
        vocabulary=vocabulary,
        output=args.output,
        duration=args.duration,
        warmup=args.warmup,
        channels=args.channels,
        chunk=args.chunk if args.sequences else 0,
    )
    sample = 200 if args.verify else 0
    if args.verify:  # ONNX Runtime only when asked for (the verify extra), never otherwise
        from lstm_serving.client.load import verify
    results: list[generator.LevelResult] = []
    report_levels: list[dict[str, Any]] = []
    for concurrency, rate in levels:
        before = scrape(args.metrics_url) if args.metrics_url else {}
        progress = not args.json and sys.stderr.isatty()  # a \r line is for terminals only
        result = generator.run_level_in_processes(
            spec, args.processes, concurrency, rate, progress, sample
        )
        level = result.as_dict()
        if args.metrics_url:
            level["server"] = server_split(before, scrape(args.metrics_url))
        if args.verify:
            expected = workload.Workload(spec)
            checked = verify.verify(expected, result.answers, args.verify)  # pyright: ignore[reportPossiblyUnboundVariable]
            level["verify"] = dataclasses.asdict(checked)
        results.append(result)
        report_levels.append(level)
    report = {
        "spec": dataclasses.asdict(spec),
        "processes": args.processes,
        "levels": report_levels,
    }
    if args.json_file:
        args.json_file.write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report))
    else:
        print(table(results))
        for level in report_levels:
            name = f"{level['rate']:g}/s" if level["rate"] else f"c={level['concurrency']}"
            if "server" in level:
                split = level["server"]
                print(
                    f"{name}: server queue {split['queue_ms']:.3f} ms, compute "
                    f"{split['compute_ms_per_batch']:.3f} ms/batch, mean batch "
                    f"{split['mean_batch_size']:.1f}, padding {split['padding_ratio']:.1%}"
                )
            if "verify" in level:
                check = level["verify"]
                print(
                    f"{name}: verified {check['checked']} answers, {check['wrong']} wrong "
                    f"(max abs diff {check['max_abs_diff']:.3g})"
                )
    wrong = any(level.get("verify", {}).get("wrong") for level in report_levels)
    return 1 if wrong or any(r.errors for r in results) else 0


def table(results: list[LevelResult]) -> str:
    header = ["level", "req/s", "seq/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms", "errors"]
    rows = [header] + [
        [
            f"{r.rate:g}/s" if r.rate else f"c={r.concurrency}",
            f"{r.requests_per_second:.0f}",
            f"{r.sequences_per_second:.0f}",
            *(f"{r.latency_ms[k]:.2f}" for k in ("p50", "p90", "p95", "p99", "max")),
            ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "0",
        ]
        for r in results
    ]
    return format_table(rows, align="right")


def scrape(url: str) -> dict[str, float]:
    """Sums every sample of a Prometheus endpoint by name (all models, all labels)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "le" not in sample.labels:
                totals[sample.name] += sample.value
    return dict(totals)


def server_split(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the server saw during a level: mean queue wait, run time, batch size, padding."""

    def mean(name: str) -> float:
        count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
        total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
        return total / count if count else 0.0

    return {
        "queue_ms": 1000 * mean("lstm_queue_duration_seconds"),
        "compute_ms_per_batch": 1000 * mean("lstm_inference_duration_seconds"),
        "mean_batch_size": mean("lstm_batch_size"),
        "padding_ratio": mean("lstm_batch_padding_ratio"),
    }
