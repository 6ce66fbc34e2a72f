"""Prometheus metrics: every metric declared once here (the /metrics endpoint is the server's).

Names and labels are fixed (dashboards and alerts depend on them). With --workers N the
workers write prometheus-client's multiprocess files and the parent serves one scrape that
sums them; PROMETHEUS_MULTIPROC_DIR must then be set before the process starts
(`lstm-serve` does that itself).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from lstm_serving.core.batching import BatchReport

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_TMP_PREFIX = "lstm-serve-metrics-"  # a directory lstm-serve made itself (and removes)
# ~50 us to 10 s: the library's default buckets start at 5 ms, coarser than one run here.
DURATION_BUCKETS = (
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
LENGTH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


# The calls that are load (autoscaling's request rate counts them; metadata, ListModels and
# health polls are not): lstm.v1's and KServe v2's inference RPCs.
INFERENCE_RPCS = ("Predict", "PredictStream", "ModelInfer", "ModelStreamInfer")


def multiprocess_mode() -> bool:
    return MULTIPROC_ENV in os.environ


class Metrics:
    """All of the server's metrics, registered in `registry` (multiprocess files if enabled)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lstm_requests",
            "Requests answered, by RPC and gRPC status code.",
            ["model", "version", "rpc", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "lstm_request_duration_seconds",
            "Server-side time from a request's arrival to its response.",
            ["model", "rpc"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "lstm_queue_duration_seconds",
            "Time a request waited in the queue for its batch.",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "lstm_inference_duration_seconds",
            "Time of one ONNX Runtime run of a batch.",
            ["model", "provider"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "lstm_batch_size",
            "Sequences in one ONNX Runtime run.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.padding_ratio = Histogram(
            "lstm_batch_padding_ratio",
            "Padded steps / all steps in one run (wasted compute).",
            ["model"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.sequence_length = Histogram(
            "lstm_sequence_length",
            "Length of each sequence computed.",
            ["model"],
            buckets=LENGTH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "lstm_queue_depth",
            "Requests left waiting in the model's queue when its last batch was taken.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.model_info = Gauge(
            "lstm_model_info",
            "1 for each loaded model version and its execution provider.",
            ["model", "version", "provider"],
            multiprocess_mode="livemax",
            registry=r,
        )

        self.sequences_open = Gauge(
            "lstm_sequences_open",
            "Server-held sequences open.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.sequences_closed = Counter(
            "lstm_sequences_closed",
            "Server-held sequences closed, by reason (ended, expired, evicted).",
            ["model", "reason"],
            registry=r,
        )
        self.sequence_steps = Histogram(
            "lstm_sequence_step_length",
            "Time steps in each call of a server-held sequence.",
            ["model"],
            buckets=LENGTH_BUCKETS,
            registry=r,
        )
        self.sequence_store = Histogram(
            "lstm_sequence_store_seconds",
            "Round trips to the shared sequence store (--sequence-store), by result (ok, error).",
            ["result"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.reloads = Counter(
            "lstm_model_reloads",
            "Versions loaded, rejected or removed after start-up.",
            ["model", "result"],
            registry=r,
        )

    def model_served(self, model: str, version: int, provider: str) -> None:
        """A model version is served: its info, and its inference counters at zero from now
        on, so a rate over them (the autoscaler's metric) exists before its first call."""
        self.model_info.labels(model, str(version), provider).set(1)
        for rpc in INFERENCE_RPCS:
            self.requests.labels(model, str(version), rpc, "OK")

    def sequence_store_call(self, seconds: float, ok: bool) -> None:
        self.sequence_store.labels("ok" if ok else "error").observe(seconds)

    def batch_observer(self, model: str, provider: str) -> BatchMetrics:
        return BatchMetrics(self, model, provider)

    def sequence_observer(self, model: str) -> SequenceMetrics:
        return SequenceMetrics(self, model)


class SequenceMetrics:
    """The sequence store's view of the metrics for one model."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._open = metrics.sequences_open.labels(model)
        self._closed = metrics.sequences_closed
        self._steps = metrics.sequence_steps.labels(model)
        self._model = model

    def open_changed(self, count: int) -> None:
        self._open.set(count)

    def closed(self, reason: str) -> None:
        self._closed.labels(self._model, reason).inc()

    def stepped(self, steps: int) -> None:
        self._steps.observe(steps)


class BatchMetrics:
    """The batcher's view of the metrics for one model: children resolved once, not per call."""

    def __init__(self, metrics: Metrics, model: str, provider: str) -> None:
        self._queue_depth = metrics.queue_depth.labels(model)
        self._queue_duration = metrics.queue_duration.labels(model)
        self._inference = metrics.inference_duration.labels(model, provider)
        self._batch_size = metrics.batch_size.labels(model)
        self._padding = metrics.padding_ratio.labels(model)
        self._length = metrics.sequence_length.labels(model)

    def queue_changed(self, depth: int) -> None:
        self._queue_depth.set(depth)

    def batch_ran(self, report: BatchReport) -> None:
        """A few increments per batch, none per sequence (and for a batch of many requests,
        none per request: their waits and lengths are counted into buckets with numpy)."""
        lengths = report.lengths
        steps = int(lengths.max()) * len(lengths)
        self._inference.observe(report.compute_seconds)
        self._batch_size.observe(len(lengths))
        self._padding.observe(1.0 - float(lengths.sum()) / steps)
        observe_all(self._queue_duration, report.waits)
        observe_all(self._length, report.longest)


# Values from which counting them into buckets with numpy is cheaper than observing each
# (measured: ~0.6 us a value observed, ~5 us a numpy count whatever the number).
BULK_FROM = 8


def observe_all(histogram: Histogram, values: list[float] | list[int]) -> None:
    """`histogram.observe` of each value; from BULK_FROM values on, as one increment per
    non-empty bucket and one of the sum (`observe` takes a lock and scans the buckets per
    value). Relies on prometheus-client's layout (pinned): `_upper_bounds` ending in +Inf, one
    value per bucket, not cumulative (test_metrics compares the two)."""
    if len(values) < BULK_FROM:
        for value in values:
            histogram.observe(value)
        return
    bounds = histogram._upper_bounds
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    buckets = histogram._buckets
    for index in np.flatnonzero(counts):
        buckets[index].inc(int(counts[index]))
    histogram._sum.inc(float(sum(values)))


def aggregate_registry() -> CollectorRegistry:
    """The parent's registry in multiprocess mode: sums every worker's files."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def reset_multiprocess_dir() -> Path:
    """Empties the directory: files from an earlier run would be summed in otherwise."""
    path = Path(os.environ[MULTIPROC_ENV])
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def mark_worker_dead(pid: int) -> None:
    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
