"""`lstm-client`: talk to an lstm-serve from the shell. Tables by default, --json for machines.

Exit status: 0 ok, 1 the server answered with an error (its status code is printed; for
`load`: a request failed or a verified answer was wrong), 2 bad usage, 3 not SERVING.
Over 250 lines: every subcommand's arguments and output in one place (load's: load.command).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict

from lstm_serving.client.client import LstmClient, Prediction, Security
from lstm_serving.client.load.command import add_load_arguments, run_load
from lstm_serving.contract import (
    LAST_HIDDEN,
    OUTPUT_CHOICES,
    PREDICTION,
    SEQUENCE,
    Architecture,
    HeadSpec,
    LayerSpec,
)
from lstm_serving.proto.v1 import lstm_pb2 as pb
from lstm_serving.tables import format_table

SEQUENCE_COMMAND = "sequence"  # not a tensor name


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lstm-client", description="Client for lstm-serve.")
    p.add_argument(
        "--target",
        default="localhost:50051",
        help="HOST:PORT of the server; several IP:PORT,IP:PORT or one dns:///NAME:PORT "
        "spread calls round-robin over every address",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--tls-ca", type=Path, help="PEM CA of the server's certificate: use TLS")
    p.add_argument("--tls-cert", type=Path, help="PEM client certificate (mutual TLS)")
    p.add_argument("--tls-key", type=Path, help="PEM key of --tls-cert")
    p.add_argument(
        "--token-file", type=Path, help="file holding a bearer token (or set LSTM_CLIENT_TOKEN)"
    )
    sub = p.add_subparsers(dest="command", required=True)
    command = argparse.ArgumentDefaultsHelpFormatter
    sub.add_parser("models", help="list loaded models and versions")
    describe = sub.add_parser(
        "describe", help="layers, shapes, provider and limits of a model", formatter_class=command
    )
    describe.add_argument("name")
    describe.add_argument("--version", type=int, default=0, help="0: newest")
    predict = sub.add_parser("predict", help="run a prediction", formatter_class=command)
    predict.add_argument("name")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        type=Path,
        help=".npy file: [batch, time, features] floats, or integer token ids [batch, time]",
    )
    source.add_argument(
        "--tokens", metavar="ID,ID,...", help="one sequence of token ids, for a text model"
    )
    source.add_argument("--random", metavar="B,T", help="random normal input of B sequences of T")
    predict.add_argument("--lengths", type=int, nargs="+", help="one length per sequence")
    predict.add_argument(
        "--output",
        choices=tuple(OUTPUT_CHOICES),
        help="default: the model's own answer (its head's prediction, else last_hidden)",
    )
    predict.add_argument("--return-state", action="store_true", help="also each layer's (h, c)")
    predict.add_argument("--version", type=int, default=0, help="0: newest")
    predict.add_argument("--seed", type=int, default=0, help="seed for --random")
    add_load_arguments(
        sub.add_parser(
            "load", help="load test: a table per concurrency or rate level", formatter_class=command
        )
    )
    sequence = sub.add_parser(
        SEQUENCE_COMMAND,
        help="stream a .npy file through a server-held sequence, a chunk a call",
        formatter_class=command,
    )
    sequence.add_argument("name")
    sequence.add_argument("--input", type=Path, required=True, help=".npy [time, features]")
    sequence.add_argument("--chunk", type=int, default=10, help="time steps per call")
    sequence.add_argument("--id", default="", help="sequence id (default: a random one)")
    sequence.add_argument(
        "--output", choices=tuple(OUTPUT_CHOICES), help="default: the model's own answer"
    )
    sequence.add_argument(
        "--keep-open", action="store_true", help="do not end the sequence after the last chunk"
    )
    sequence.add_argument("--version", type=int, default=0, help="0: newest")
    health = sub.add_parser(
        "health", help="SERVING or NOT_SERVING; exit 3 unless SERVING", formatter_class=command
    )
    health.add_argument("--service", default="", help="one service, e.g. lstm.v1.LstmService")
    return p.parse_args(argv)


def _describe_text(d: pb.ModelDescription) -> str:
    head = d.head if d.HasField("head") else None
    arch = Architecture(
        input_size=d.input_size,
        layers=tuple(
            LayerSpec(
                la.units,
                la.direction,
                la.input_size,
                la.parameters,
                la.keras_parameters,
                tuple(la.activations),
                not la.no_bias,
            )
            for la in d.layers
        ),
        opset=0,
        head=None
        if head is None
        else HeadSpec(
            head.units,
            head.activation,
            head.per_step,
            head.parameters,
            head.input,
            hidden=tuple((d.name, d.units, d.activation) for d in head.hidden),
            name=head.name,
        ),
        mask_value=d.mask_value if d.HasField("mask_value") else None,
        source=d.source,
    )
    b = d.batching
    return "\n".join(
        [
            f"Model {d.name} version {d.version} "
            f"(loaded: {', '.join(map(str, d.loaded_versions))})",
            f"Provider: {d.execution_provider}",
            f"Batching: max {b.max_batch_size} sequences, delay {b.max_queue_delay_ms:g} ms, "
            f"queue {b.max_queue_size} requests, time <= {b.max_sequence_length}",
            "",
            arch.summary(),
        ]
    )


def _prediction_dict(p: Prediction) -> dict[str, Any]:
    out: dict[str, Any] = {"model": p.model, "version": p.version}
    if p.last_hidden is not None:
        out[LAST_HIDDEN] = p.last_hidden.tolist()
    if p.sequence is not None:
        out[SEQUENCE] = p.sequence.tolist()
    if p.prediction is not None:
        out[PREDICTION] = p.prediction.tolist()
    if p.states:
        out["state"] = [{"h": h.tolist(), "c": c.tolist()} for h, c in p.states]
    return out


def _prediction_text(p: Prediction) -> str:
    lines = [f"model {p.model} version {p.version}"]
    with np.printoptions(precision=4, suppress=True, threshold=200, linewidth=100):
        for name in (PREDICTION, LAST_HIDDEN, SEQUENCE):
            value = getattr(p, name)
            if value is not None:
                lines += [f"{name} {list(value.shape)}:", str(value)]
        for k, (h, c) in enumerate(p.states):
            lines += [f"layer {k} final h {list(h.shape)}:", str(h), f"layer {k} final c:", str(c)]
    return "\n".join(lines)


def run(args: argparse.Namespace, client: LstmClient) -> int:
    if args.command == "health":
        try:
            status = client.health(args.service)
        except grpc.RpcError as exc:  # unreachable or unknown: not SERVING either
            print(f"lstm-client: {exc.code().name}: {exc.details()}", file=sys.stderr)
            status = exc.code().name
        print(json.dumps({"status": status}) if args.json else status)
        return 0 if status == "SERVING" else 3
    if args.command == "models":
        models = client.list_models()
        if args.json:
            print(json.dumps(models))
        else:
            rows = [["MODEL", "VERSIONS"]]
            rows += [[n, ", ".join(map(str, v))] for n, v in models.items()]
            print(format_table(rows))
        return 0
    if args.command == "load":
        if args.features:  # the model is not asked: a load test of the refusals is possible
            return run_load(args, args.features)
        described = client.describe(args.name)
        vocabulary = described.embedding.vocabulary if described.HasField("embedding") else 0
        return run_load(args, described.input_size, vocabulary)
    if args.command == SEQUENCE_COMMAND:
        return run_sequence(args, client)
    if args.command == "describe":
        d = client.describe(args.name, args.version)
        print(json.dumps(MessageToDict(d)) if args.json else _describe_text(d))
        return 0
    if args.input is not None:
        try:
            inputs = np.load(args.input, allow_pickle=False)
        except (OSError, ValueError) as exc:
            print(f"lstm-client: cannot read {args.input} as a .npy array: {exc}", file=sys.stderr)
            return 2
        is_ids = inputs.dtype.kind in "iu"  # integer ids go as tokens
        inputs = inputs.astype(np.int64 if is_ids else np.float32)
    elif args.tokens is not None:
        try:
            inputs = np.array([[int(v) for v in args.tokens.split(",")]], np.int64)
        except ValueError:
            print(
                f"lstm-client: --tokens takes ids like 12,7,99, got {args.tokens!r}",
                file=sys.stderr,
            )
            return 2
    else:
        try:
            batch, steps = (int(v) for v in args.random.split(","))
        except ValueError:
            print(
                f"lstm-client: --random takes B,T (e.g. 4,10), got {args.random!r}", file=sys.stderr
            )
            return 2
        rng = np.random.default_rng(args.seed)
        features = _features(client, args.name, args.version)
        inputs = rng.standard_normal((batch, steps, features)).astype(np.float32)
    p = client.predict(
        args.name,
        inputs,
        lengths=args.lengths,
        output=args.output,
        version=args.version,
        return_state=args.return_state,
    )
    print(json.dumps(_prediction_dict(p)) if args.json else _prediction_text(p))
    return 0


def run_sequence(args: argparse.Namespace, client: LstmClient) -> int:
    """Streams the file's steps through one sequence over one stream; prints each chunk."""
    try:
        x = np.load(args.input, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as exc:
        print(f"lstm-client: cannot read {args.input} as a .npy array: {exc}", file=sys.stderr)
        return 2
    x = x[0] if x.ndim == 3 and x.shape[0] == 1 else x
    if x.ndim != 2 or args.chunk < 1:
        print(
            "lstm-client: sequence takes a [time, features] array and --chunk >= 1", file=sys.stderr
        )
        return 2
    sequence_id = args.id or f"lstm-client-{os.getpid()}-{time.time_ns()}"
    chunks = [(a, min(a + args.chunk, len(x))) for a in range(0, len(x), args.chunk)]
    answers = []
    with client.sequence(args.name, sequence_id, version=args.version) as handle:
        for n, (a, b) in enumerate(chunks):
            last = n == len(chunks) - 1 and not args.keep_open
            p = handle.step(x[a:b], end=last, output=args.output)
            answers.append({"steps": [a, b], **_prediction_dict(p)})
            if not args.json:
                print(f"steps {a}..{b - 1}:\n{_prediction_text(p)}")
    if args.json:
        print(json.dumps({"sequence_id": sequence_id, "chunks": answers}))
    return 0


def _features(client: LstmClient, name: str, version: int) -> int:
    """The model's input width, for --random. For a model or version the server does not have,
    1: the Predict then gets the server's NOT_FOUND (and is counted as the Predict it is)."""
    versions = client.list_models().get(name, [])
    if not versions or (version and version not in versions):
        return 1
    return client.describe(name, version).input_size


def security(args: argparse.Namespace) -> Security:
    token = (
        args.token_file.read_text().strip()
        if args.token_file
        else os.environ.get("LSTM_CLIENT_TOKEN")
    )
    return Security(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, token=token or None)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with LstmClient(args.target, timeout=args.timeout, security=security(args)) as client:
        try:
            return run(args, client)
        except grpc.RpcError as exc:
            print(f"lstm-client: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
