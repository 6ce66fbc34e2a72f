"""The metrics on their own: what one batch and one sequence record, read back from a real
exposition parsed by prometheus-client."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import generate_latest

from lstm_serving.core.batching import BatchReport
from lstm_serving.core.metrics import INFERENCE_RPCS, Metrics, observe_all
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2 as v2_pb2
from lstm_serving.proto.v1 import lstm_pb2
from tests.helpers import parse, value


def test_a_batch_records_its_size_padding_waits_and_lengths() -> None:
    metrics = Metrics()
    observer = metrics.batch_observer("seed", "CPUExecutionProvider")
    observer.queue_changed(3)
    report = BatchReport(np.array([4, 2, 2], np.int32), [1e-3, 2e-3], [4, 2], 5e-4)
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


def test_observing_in_bulk_exposes_what_observing_each_value_does() -> None:
    values = [0.0, 5e-5, 6e-5, 1e-3, 0.7, 3.0, 11.0, 1e-3, 2.5e-4]  # from BULK_FROM on
    one_by_one, in_bulk = Metrics(), Metrics()
    for value_ in values:
        one_by_one.queue_duration.labels("seed").observe(value_)
    observe_all(in_bulk.queue_duration.labels("seed"), values)
    expected = parse(generate_latest(one_by_one.registry).decode())
    got = parse(generate_latest(in_bulk.registry).decode())
    buckets = {k: v for k, v in expected.items() if k[0] == "lstm_queue_duration_seconds_bucket"}
    assert len(buckets) == 18 and all(got[key] == count for key, count in buckets.items())
    total = "lstm_queue_duration_seconds_sum", frozenset({("model", "seed")})
    assert got[total] == pytest.approx(expected[total])


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


def test_a_served_model_exports_its_inference_counters_at_zero() -> None:
    """The autoscaler's request rate exists for a pod before its first call."""
    metrics = Metrics()
    metrics.model_served("seed", 2, "CPUExecutionProvider")
    samples = parse(generate_latest(metrics.registry).decode())
    for rpc in INFERENCE_RPCS:
        labels = {"model": "seed", "version": "2", "rpc": rpc, "code": "OK"}
        assert samples[("lstm_requests_total", frozenset(labels.items()))] == 0  # present
    info = {"model": "seed", "version": "2", "provider": "CPUExecutionProvider"}
    assert value(samples, "lstm_model_info", **info) == 1


def test_the_inference_rpcs_are_the_services_inference_methods() -> None:
    methods = {
        *lstm_pb2.DESCRIPTOR.services_by_name["LstmService"].methods_by_name,
        *v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name,
    }
    assert set(INFERENCE_RPCS) <= methods
    assert {m for m in methods if "Infer" in m or "Predict" in m} == set(INFERENCE_RPCS)
