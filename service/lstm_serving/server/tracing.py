"""Optional OpenTelemetry tracing (`--otlp-endpoint`, the `[tracing]` extra); the only module
that imports opentelemetry, and only when tracing is on.

Every call of both APIs gets a SERVER span continuing the caller's W3C trace context (the
`traceparent` metadata), with a `queue` and a `compute` child for each inference it made (model,
version and batch size as attributes). Off, nothing is wrapped: the handlers are registered as
they are, so tracing costs nothing it does not do.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lstm_serving.core.batching import RunTiming
from lstm_serving.core.dataplane import TRACED_RUNS
from lstm_serving.server.streams import Context

Handler = Callable[[Any, Context], Awaitable[Any]]
SERVICE_NAME = "lstm-serve"


class Tracing:
    def __init__(self, exporter: SpanExporter) -> None:
        self._provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("lstm_serving")
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def otlp(cls, endpoint: str) -> Tracing:
        """Spans batched to an OTLP/gRPC collector (http:// for one without TLS)."""
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return cls(OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://")))

    def traced(self, rpc: str, handler: Handler) -> Handler:
        """`handler` inside a SERVER span named after its RPC ("lstm.v1.LstmService/Predict")."""

        async def call(request: Any, context: Context) -> Any:
            metadata = context.invocation_metadata() or ()
            carrier = {key: value for key, value in metadata if isinstance(value, str)}
            span = self._tracer.start_span(
                rpc,
                context=self._propagator.extract(carrier),
                kind=trace.SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.method": rpc.rsplit("/", 1)[1]},
            )
            runs: list[RunTiming] = []
            token = TRACED_RUNS.set(runs)
            try:
                return await handler(request, context)
            except BaseException as exc:
                span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
                raise
            finally:
                TRACED_RUNS.reset(token)
                code = context.code() or grpc.StatusCode.OK  # None: never set, so OK
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                self._record_runs(span, runs)
                span.end()

        return call

    def _record_runs(self, parent: trace.Span, runs: list[RunTiming]) -> None:
        within = trace.set_span_in_context(parent)
        epoch_ns = time.time_ns() - time.monotonic_ns()
        for run in runs:
            if not run.started:  # refused or failed before it ran
                continue
            attributes: dict[str, str | int] = {
                "lstm.model": run.model,
                "lstm.model_version": run.version,
                "lstm.batch_size": run.batch_size,
            }
            for name, begins, ends in (
                ("queue", run.queued, run.started),
                ("compute", run.started, run.started + run.compute_seconds),
            ):
                child = self._tracer.start_span(
                    name,
                    context=within,
                    start_time=epoch_ns + int(begins * 1e9),
                    attributes=attributes,
                )
                child.end(end_time=epoch_ns + int(ends * 1e9))

    def close(self) -> None:
        """Sends what is batched (at most a few seconds' wait) and stops."""
        self._provider.shutdown()
