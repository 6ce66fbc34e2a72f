"""The metrics on their own: what one batch and one sequence record, read back from a real
exposition parsed by prometheus-client."""

from __future__ import annotations

import numpy as np
from prometheus_client import generate_latest

from lstm_serving.core.batching import BatchReport
from lstm_serving.core.metrics import Metrics
from tests.helpers import parse, value


def test_a_batch_records_its_size_padding_waits_and_lengths() -> None:
    metrics = Metrics()
    observer = metrics.batch_observer("seed", "CPUExecutionProvider")
    observer.queue_changed(3)
    report = BatchReport(np.array([4, 2, 2], np.int32), [0.001, 0.002], [4, 2], 0.0005)
    observer.batch_ran(report)
    samples = parse(generate_latest(metrics.registry).decode())
    assert value(samples, "lstm_queue_depth", model="seed") == 3
    assert value(samples, "lstm_batch_size_sum", model="seed") == 3
    assert value(samples, "lstm_batch_padding_ratio_sum", model="seed") == 1 - 8 / 12
    assert value(samples, "lstm_queue_duration_seconds_count", model="seed") == 2  # per request
    assert value(samples, "lstm_sequence_length_sum", model="seed") == 6
    provider = {"model": "seed", "provider": "CPUExecutionProvider"}
    assert value(samples, "lstm_inference_duration_seconds_count", **provider) == 1
    assert value(samples, "lstm_inference_duration_seconds_bucket", le="5e-05", **provider) == 0


def test_sequences_record_opens_steps_and_why_they_closed() -> None:
    metrics = Metrics()
    observer = metrics.sequence_observer("seed")
    observer.open_changed(2)
    observer.stepped(7)
    observer.closed("expired")
    samples = parse(generate_latest(metrics.registry).decode())
    assert value(samples, "lstm_sequences_open", model="seed") == 2
    assert value(samples, "lstm_sequence_step_length_sum", model="seed") == 7
    assert value(samples, "lstm_sequences_closed_total", model="seed", reason="expired") == 1
