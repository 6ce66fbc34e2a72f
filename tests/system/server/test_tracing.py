"""OpenTelemetry tracing: the caller's W3C trace continued into a server span with queue and
compute children, recorded by the SDK's in-memory exporter; and --otlp-endpoint exporting to a
real OTLP/gRPC receiver from a real lstm-serve process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from lstm_serving.client.client import predict_request
from lstm_serving.core.settings import Settings
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from lstm_serving.proto.v1 import lstm_pb2_grpc as pb_grpc
from lstm_serving.protocols.kserve_v2 import build_infer_request
from lstm_serving.server.app import LstmServer
from tests.helpers import free_port, start, stop, wait_serving

TRACE_ID, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = (("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01"),)
X = np.ones((1, 4, 2), np.float32)


async def test_a_call_continues_the_callers_trace(seed_repository: Path) -> None:
    exporter = InMemorySpanExporter()
    settings = Settings(repository=seed_repository, host="127.0.0.1", port=0, metrics_port=0)
    server = LstmServer(settings, span_exporter=exporter)
    await server.start()
    await server.load()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.LstmServiceStub(channel)
            await asyncio.gather(
                *(stub.Predict(predict_request("seed", X), metadata=TRACEPARENT) for _ in range(3))
            )
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Predict(predict_request("seed", np.ones((1, 4, 5), np.float32)))
            infer = build_infer_request("seed", X)
            await v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer)
    finally:
        await server.stop(grace=1)  # flushes the spans
    spans = exporter.get_finished_spans()
    predicts = [s for s in spans if s.name == "lstm.v1.LstmService/Predict"]
    assert len(predicts) == 4
    traced = [s for s in predicts if s.context.trace_id == int(TRACE_ID, 16)]
    assert len(traced) == 3
    for span in traced:
        assert span.kind == SpanKind.SERVER and span.parent is not None
        assert span.parent.span_id == int(CALLER_SPAN, 16)  # the caller's span is the parent
        assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 0
        children = {
            c.name: c for c in spans if c.parent and c.parent.span_id == span.context.span_id
        }
        assert set(children) == {"queue", "compute"}
        queue, compute = children["queue"], children["compute"]
        assert queue.attributes is not None and compute.attributes is not None
        assert (
            queue.attributes["lstm.model"] == "seed" and queue.attributes["lstm.model_version"] == 1
        )
        assert compute.attributes["lstm.batch_size"] in (1, 2, 3)
        assert queue.end_time == compute.start_time
        assert compute.end_time is not None and span.end_time is not None
        assert compute.end_time <= span.end_time
    (refused,) = [s for s in predicts if s not in traced]  # a new trace, no inference in it
    assert refused.attributes is not None and refused.attributes["rpc.grpc.status_code"] == 3
    assert not [c for c in spans if c.parent and c.parent.span_id == span_id(refused)]
    (v2_span,) = [s for s in spans if s.name == "inference.GRPCInferenceService/ModelInfer"]
    v2_children = {c.name for c in spans if c.parent and c.parent.span_id == span_id(v2_span)}
    assert v2_children == {"queue", "compute"}


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver, as a collector runs one: keeps every span's name."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def Export(self, request: Any, context: Any) -> Any:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.names += [span.name for span in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    collector = grpc.server(futures.ThreadPoolExecutor(2))
    spans = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        spans, collector
    )
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    yield spans, port
    collector.stop(0)


def test_otlp_endpoint_exports_to_a_collector(
    seed_repository: Path, receiver: tuple[Receiver, int]
) -> None:
    spans, collector_port = receiver
    port = free_port()
    process = start(seed_repository, port, "--otlp-endpoint", f"http://127.0.0.1:{collector_port}")
    try:
        wait_serving(process, port)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            pb_grpc.LstmServiceStub(channel).Predict(predict_request("seed", X), timeout=10)
    finally:
        code, err = stop(process)  # SIGTERM: the batched spans are sent before it exits
    assert code == 0, err
    assert spans.names.count("lstm.v1.LstmService/Predict") == 1
    assert spans.names.count("queue") == 1 and spans.names.count("compute") == 1
