"""The one Settings object: every flag of `lstm-serve`, each with an LSTM_SERVE_* variable.

Precedence: command-line flag, then environment variable, then the default here.
Nothing is read at import time; `parse_settings` reads argv and the environment it is given.
Over 250 lines: one field per flag, each with the help a user reads, in one place.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "LSTM_SERVE_"


@dataclass(frozen=True)
class Settings:
    repository: Path = field(
        default=Path("models"),
        metadata={"help": "model repository: DIR/<name>/<version>/model.onnx"},
    )
    model_name: str = field(
        default="",
        metadata={
            "help": "serve --repository as this one model's folder: DIR/<version>/model.onnx, "
            "or DIR/model.onnx as version 1 (KServe mounts one model at /mnt/models); "
            "empty: DIR/<name>/<version>/model.onnx"
        },
    )
    host: str = field(default="0.0.0.0", metadata={"help": "address to listen on"})
    port: int = field(default=50051, metadata={"help": "gRPC port (0 picks a free one)"})
    metrics_host: str = field(
        default="127.0.0.1",
        metadata={
            "help": "address /metrics listens on (without --metrics-tls it has no auth: "
            "0.0.0.0 only where a Prometheus on another host scrapes it over a trusted network)"
        },
    )
    metrics_tls: bool = field(
        default=False,
        metadata={
            "help": "serve /metrics over TLS with --tls-cert/--tls-key (and, with "
            "--tls-client-ca, only to scrapers holding a client certificate it signed)"
        },
    )
    metrics_port: int = field(
        default=8002, metadata={"help": "Prometheus /metrics port (reserved; 0 disables)"}
    )
    health_port: int = field(
        default=0,
        metadata={
            "help": "also serve the gRPC health service alone on this port, plaintext, for "
            "probes (kubelet gRPC probes speak no TLS): the data port's TLS, tokens, limits "
            "and load do not reach it; 0: health on the data port only"
        },
    )
    device: str = field(
        default="auto",
        metadata={
            "help": "cpu, cuda (fail if CUDA is unusable), or auto (CUDA when usable)",
            "choices": ("cpu", "cuda", "auto"),
        },
    )
    workers: int = field(
        default=1, metadata={"help": "server processes sharing the port (SO_REUSEPORT)"}
    )
    intra_op_threads: int = field(
        default=0,
        metadata={
            "help": "ONNX Runtime threads per worker for large runs (0: cores / workers); small "
            "runs, where waking threads costs more than they share, use one"
        },
    )
    max_batch_size: int = field(
        default=64, metadata={"help": "most sequences in one batch; a larger request runs alone"}
    )
    max_queue_delay_ms: float = field(
        default=0.0,
        metadata={
            "help": "how long a request waits for others to join its batch "
            "(0: batch what queued while the previous batch ran)"
        },
    )
    max_queue_size: int = field(
        default=1024,
        metadata={"help": "requests waiting per model before RESOURCE_EXHAUSTED"},
    )
    max_sequence_length: int = field(
        default=2048, metadata={"help": "longest time dimension accepted"}
    )
    max_request_sequences: int = field(
        default=1024, metadata={"help": "most sequences one request may carry"}
    )
    max_request_steps: int = field(
        default=262144,
        metadata={
            "help": "most sequence-steps (sequences x time steps) one request may carry: a "
            "request's compute time and ONNX Runtime memory grow with it (~1.3 KB a step for "
            "the seed model)"
        },
    )
    max_queue_steps: int = field(
        default=1048576,
        metadata={
            "help": "sequence-steps waiting per model before RESOURCE_EXHAUSTED: bounds the "
            "wait of a request behind the queue (>= --max-request-steps)"
        },
    )
    max_sequences: int = field(
        default=10000,
        metadata={"help": "server-held sequences open at once per model version"},
    )
    max_sequences_per_owner: int = field(
        default=2500,
        metadata={
            "help": "server-held sequences one caller may hold open per model version, so one "
            "cannot take every sequence (a caller: its token, or without tokens its address; "
            "callers behind one proxy share it)"
        },
    )
    sequence_store: str = field(
        default="",
        metadata={
            "help": "redis://HOST:PORT/DB: keep server-held sequences in Redis, so any replica "
            "serves any step and a replica that goes loses none (default: in this process)"
        },
    )
    sequence_idle_timeout: float = field(
        default=60.0,
        metadata={"help": "seconds a server-held sequence may stay idle before it is freed"},
    )
    max_message_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata={"help": "largest gRPC message received or sent, in bytes"},
    )
    answer_budget: int = field(
        default=0,
        metadata={
            "help": "bytes of answers (and their requests' inputs) this process may hold at "
            "once, computing or waiting to be read (an answer counts four times its size: "
            "what it holds until sent); past it new work is refused RESOURCE_EXHAUSTED before "
            "it runs. 0: an eighth of the memory the container may use (cgroup limit, else "
            "the machine's), shared by --workers"
        },
    )
    answer_budget_per_connection: int = field(
        default=0,
        metadata={
            "help": "the same bytes, for one connection, so one client that does not read its "
            "answers cannot hold the whole budget. 0: half of --answer-budget (at least four "
            "times --max-message-bytes)"
        },
    )
    max_connection_idle: float = field(
        default=300.0,
        metadata={
            "help": "seconds a connection may carry no call before the server closes it "
            "(GOAWAY; clients reconnect when they next call); 0: never"
        },
    )
    max_connection_age: float = field(
        default=0.0,
        metadata={
            "help": "seconds after which a connection is asked to close (GOAWAY; calls in "
            "flight get --grace-period to finish, clients reconnect), so clients of a scaled-out "
            "service spread onto new replicas; 0: never"
        },
    )
    max_concurrent_streams: int = field(
        default=1024,
        metadata={
            "help": "calls one connection may carry at once (HTTP/2 MAX_CONCURRENT_STREAMS; "
            "gRPC clients queue the rest). Bounds what streams opened and reset at once "
            "(HTTP/2 rapid reset) can cost"
        },
    )
    max_streams: int = field(
        default=1024,
        metadata={
            "help": "PredictStream and ModelStreamInfer streams open at once on this server; "
            "more are refused RESOURCE_EXHAUSTED"
        },
    )
    max_streams_per_caller: int = field(
        default=256,
        metadata={
            "help": "streams one caller may hold open (a caller: its token, or without tokens "
            "its address; callers behind one proxy share it), so one cannot take every stream"
        },
    )
    stream_idle_timeout: float = field(
        default=300.0,
        metadata={
            "help": "seconds a stream may wait for its next message before the server ends it "
            "(DEADLINE_EXCEEDED), freeing its place under --max-streams; keep it above "
            "--sequence-idle-timeout; 0: never"
        },
    )
    request_read_timeout: float = field(
        default=60.0,
        metadata={
            "help": "seconds a unary call's request may take to arrive in full before the call "
            "is ended (DEADLINE_EXCEEDED), so a client that sends headers and never its message "
            "holds nothing for long; 0: never"
        },
    )
    grace_period: float = field(
        default=10.0, metadata={"help": "seconds in-flight calls get to finish on SIGTERM"}
    )
    reload_interval: float = field(
        default=5.0,
        metadata={
            "help": "seconds between scans of the repository for new or removed versions, so a "
            "newly exported model is served without a restart (0: only on SIGHUP)"
        },
    )
    allow_outside_links: bool = field(
        default=False,
        metadata={
            "help": "serve model folders or files that are symlinks to places outside "
            "--repository (ignored with a warning otherwise)"
        },
    )
    reflection: bool = field(
        default=True, metadata={"help": "serve gRPC server reflection (--no-reflection: off)"}
    )
    tls_cert: Path | None = field(
        default=None, metadata={"help": "PEM certificate chain: serve TLS", "type": Path}
    )
    tls_key: Path | None = field(
        default=None, metadata={"help": "PEM private key of --tls-cert", "type": Path}
    )
    tls_client_ca: Path | None = field(
        default=None,
        metadata={
            "help": "PEM CA bundle: require client certificates it signed (mTLS)",
            "type": Path,
        },
    )
    auth_token_file: Path | None = field(
        default=None,
        metadata={
            "help": "file of accepted bearer tokens, one per line: calls without one get "
            "UNAUTHENTICATED (health stays open)",
            "type": Path,
        },
    )
    otlp_endpoint: str = field(
        default="",
        metadata={
            "help": "send OpenTelemetry traces of every call to this OTLP/gRPC collector, e.g. "
            "http://otel-collector:4317 (the [tracing] extra; the caller's traceparent is "
            "continued); empty: no tracing"
        },
    )
    log_level: str = field(
        default="info",
        metadata={"help": "logging level", "choices": ("debug", "info", "warning", "error")},
    )

    def answer_budgets(self, memory: int | None = None) -> tuple[int, int]:
        """--answer-budget and --answer-budget-per-connection with their defaults resolved;
        `memory`: what the container may use (read from its cgroup when not given)."""
        least = 4 * self.max_message_bytes  # one largest answer, counted four times over
        budget = self.answer_budget
        if not budget:
            available = memory if memory is not None else container_memory()
            budget = max(least, available // 8 // self.workers)
        return budget, self.answer_budget_per_connection or min(budget, max(least, budget // 2))

    def threads_per_worker(self, cpu_count: int | None = None) -> int:
        if self.intra_op_threads > 0:
            return self.intra_op_threads
        return max(1, (cpu_count or os.cpu_count() or 1) // self.workers)


def container_memory() -> int:
    """Bytes of memory this process may use: its cgroup's limit (v2, then v1), else the
    machine's."""
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 says "no limit" with a huge number
            return int(text)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


_POSITIVE = (
    "workers",
    "max_batch_size",
    "max_queue_size",
    "max_sequence_length",
    "max_request_sequences",
    "max_request_steps",
    "max_queue_steps",
    "max_message_bytes",
    "max_sequences",
    "max_sequences_per_owner",
    "max_concurrent_streams",
    "max_streams",
    "max_streams_per_caller",
)
_NON_NEGATIVE = (
    "port",
    "metrics_port",
    "health_port",
    "intra_op_threads",
    "max_queue_delay_ms",
    "grace_period",
    "reload_interval",
    "sequence_idle_timeout",
    "stream_idle_timeout",
    "request_read_timeout",
    "max_connection_idle",
    "max_connection_age",
    "answer_budget",
    "answer_budget_per_connection",
)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _env_value(kind: type, text: str) -> Any:
    if kind is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(text)
        return text.lower() in _TRUE
    return kind(text)


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Builds Settings from flags and LSTM_SERVE_* variables; exits 2 with a message on error."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="lstm-serve",
        description="Serve stacked LSTM models over gRPC with dynamic batching.",
        epilog=f"Every flag can also be set as {ENV_PREFIX}<FLAG>, "
        f"e.g. {ENV_PREFIX}MAX_BATCH_SIZE=32.",
    )
    for f in fields(Settings):
        env_name = ENV_PREFIX + f.name.upper()
        kind = f.metadata.get("type", type(f.default))
        default: Any = f.default
        if env_name in environ:
            try:
                default = _env_value(kind, environ[env_name])
            except ValueError:
                parser.error(f"{env_name}={environ[env_name]!r} is not a valid {kind.__name__}")
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (env {env_name}; default {f.default})"
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        else:
            parser.add_argument(
                flag, type=kind, default=default, choices=f.metadata.get("choices"), help=help_text
            )
    args = vars(parser.parse_args(argv))
    for name in _POSITIVE:
        if args[name] < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {args[name]}")
    for name in _NON_NEGATIVE:
        if args[name] < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {args[name]}")
    for f in fields(Settings):  # argparse checks choices on flags only, not on env defaults
        choices = f.metadata.get("choices")
        if choices and args[f.name] not in choices:
            parser.error(f"{ENV_PREFIX}{f.name.upper()} must be one of {', '.join(choices)}")
    if args["sequence_store"] and not args["sequence_store"].startswith(
        ("redis://", "rediss://", "unix://")
    ):
        parser.error(
            f"--sequence-store {args['sequence_store']!r}: a Redis URL is expected, "
            "redis://HOST:PORT/DB (rediss:// for TLS, unix:// for a socket)"
        )
    if args["max_queue_steps"] < args["max_request_steps"]:
        parser.error(
            f"--max-queue-steps ({args['max_queue_steps']}) must be >= --max-request-steps "
            f"({args['max_request_steps']}): a request that large could never be queued"
        )
    per_connection = args["answer_budget_per_connection"]
    if per_connection and per_connection < args["max_message_bytes"]:
        parser.error(
            f"--answer-budget-per-connection ({per_connection}) must be >= --max-message-bytes "
            f"({args['max_message_bytes']}): an answer that large could never be held"
        )
    if args["answer_budget"] and args["answer_budget"] < max(
        per_connection, args["max_message_bytes"]
    ):
        parser.error(
            f"--answer-budget ({args['answer_budget']}) must be >= --max-message-bytes and "
            "--answer-budget-per-connection"
        )
    if args["metrics_tls"] and args["tls_cert"] is None:
        parser.error("--metrics-tls needs --tls-cert and --tls-key")
    if (args["tls_cert"] is None) != (args["tls_key"] is None):
        parser.error("--tls-cert and --tls-key go together")
    if args["tls_client_ca"] is not None and args["tls_cert"] is None:
        parser.error("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_token_file"):
        if args[name] is not None and not args[name].is_file():
            parser.error(f"--{name.replace('_', '-')} {args[name]}: no such file")
    return Settings(**args)
