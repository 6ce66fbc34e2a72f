"""One server process: the grpc.aio server with both protocols, health, reflection and
/metrics, its start-up, reload and drain.

Start-up order: listen with health NOT_SERVING, load and warm every model in a thread, then
SERVING. On SIGTERM/SIGINT: NOT_SERVING at once, refuse new calls, let in-flight ones finish
within --grace-period, exit 0. SIGHUP rescans the repository.
Over 250 lines: the server's options, start, load, reload and drain are one life cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import signal
import time
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lstm_serving.core.dataplane import DataPlane
from lstm_serving.core.metrics import (
    Metrics,
    aggregate_registry,
    multiprocess_mode,
)
from lstm_serving.core.registry import Registry
from lstm_serving.core.repository import RepositorySync, load_models, serve_models
from lstm_serving.core.settings import Settings
from lstm_serving.core.shared_sequences import connect as connect_store
from lstm_serving.errors import StartupError
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2
from lstm_serving.proto.v1 import lstm_pb2
from lstm_serving.server.budget import AnswerBudget
from lstm_serving.server.kserve_v2 import InferenceServicer
from lstm_serving.server.lstm_v1 import LstmServicer
from lstm_serving.server.metrics_endpoint import MetricsEndpoint, serve_metrics
from lstm_serving.server.overdue import Overdue
from lstm_serving.server.registration import add_servicer
from lstm_serving.server.security import BearerTokenInterceptor, server_credentials
from lstm_serving.server.servicer import OpenStreams

if TYPE_CHECKING:
    from lstm_serving.server.tracing import Tracing

log = logging.getLogger("lstm-serve")

LSTM_API = lstm_pb2.DESCRIPTOR.services_by_name["LstmService"]
V2_API = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
HEALTH_API = health_pb2.DESCRIPTOR.services_by_name["Health"]
LSTM_SERVICE, V2_SERVICE = LSTM_API.full_name, V2_API.full_name
# With --sequence-store: this health service says whether the store is reachable (checked
# every STORE_WATCH_S seconds).
SEQUENCE_STORE_SERVICE = "lstm-serving.SequenceStore"
STORE_WATCH_S = 2.0
# How often freed heap memory is handed back to the OS (glibc's malloc_trim): after a burst of
# large or refused requests, most of what they took comes back (docs/operations.md).
TRIM_INTERVAL_S = 5.0
REFUSAL_WINDOW_S = 0.5  # on shutdown: new calls get UNAVAILABLE this long before the port closes
# Calls gRPC core holds until the Python server picks them up. Past its defaults core ends calls
# CANCELLED with no message and nothing counted; with room for a burst every call reaches the
# servicers, which answer it or refuse it RESOURCE_EXHAUSTED, counted (docs/decisions.md).
MAX_PENDING_CALLS = 65536
KEEPALIVE_MIN_MS = 10_000
SERVICES = (LSTM_SERVICE, V2_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)


def _seconds_option(name: str, seconds: float) -> list[tuple[str, int]]:
    """A gRPC option in milliseconds; none for 0 (gRPC's default: never)."""
    return [(name, int(seconds * 1000))] if seconds else []


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class LstmServer:
    """One server process. `reuse_port`: a worker sharing the port (its parent serves /metrics)."""

    def __init__(
        self, settings: Settings, reuse_port: bool = False, span_exporter: Any = None
    ) -> None:
        """`span_exporter`: an OpenTelemetry SpanExporter to trace to (--otlp-endpoint makes
        one), for embedding and tests."""
        self.settings = settings
        self.registry = Registry()
        self.metrics = Metrics()
        self.health = health.aio.HealthServicer()
        self.repository = RepositorySync(self.registry, settings, self.metrics)
        self._tokens: BearerTokenInterceptor | None = None
        if settings.auth_token_file is not None:
            try:
                self._tokens = BearerTokenInterceptor(settings.auth_token_file)
            except (OSError, ValueError) as exc:
                raise StartupError(f"--auth-token-file: {exc}") from exc
        self._server = grpc.aio.server(
            interceptors=[self._tokens] if self._tokens is not None else [],
            options=[
                ("grpc.so_reuseport", int(reuse_port)),
                ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                # Streams over this on one connection are refused at once (REFUSED_STREAM): the
                # bound that makes HTTP/2 rapid reset cheap (docs/decisions.md).
                ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
                # Core's "overload protection" refuses streams at random while a lowered limit
                # is being announced; clients queue what is over the limit instead.
                ("grpc.http.overload_protection", 0),
                # Keepalive pings from clients: one per 10 s at most (LstmClient sends one every
                # 30 s), more than 2 too soon and the connection is closed (too_many_pings), so a
                # ping flood costs nothing.
                ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_MIN_MS),
                ("grpc.http2.max_ping_strikes", 2),
                ("grpc.keepalive_permit_without_calls", 1),
                *_seconds_option("grpc.max_connection_idle_ms", settings.max_connection_idle),
                *_seconds_option("grpc.max_connection_age_ms", settings.max_connection_age),
                *_seconds_option("grpc.max_connection_age_grace_ms", settings.grace_period),
            ],
        )
        self._store_watch: asyncio.Task[None] | None = None
        self._trimming: asyncio.Task[None] | None = None
        self._health_server: grpc.aio.Server | None = None
        if settings.sequence_store:  # before any model is served: their sequences share it
            self.registry.shared_store = connect_store(settings.sequence_store)
            self.registry.shared_store.observe = self.metrics.sequence_store_call
        dataplane = DataPlane(self.registry, settings)
        streams = OpenStreams(
            settings.max_streams, settings.max_streams_per_caller, settings.stream_idle_timeout
        )
        self._tracing = _tracing(settings, span_exporter)
        traced = self._tracing.traced if self._tracing is not None else None
        budget = AnswerBudget(*settings.answer_budgets())
        reading = Overdue(settings.request_read_timeout)
        lstm_servicer = LstmServicer(dataplane, settings, self.metrics, streams, budget)
        add_servicer(self._server, lstm_servicer, LSTM_API, reading, traced)
        v2_servicer = InferenceServicer(dataplane, self.metrics, streams, budget)
        add_servicer(self._server, v2_servicer, V2_API, reading, traced)
        add_servicer(self._server, self.health, HEALTH_API, reading, answers_errors=False)
        if settings.reflection:
            reflection.enable_server_reflection(SERVICES, self._server)
        self._metrics_http: MetricsEndpoint | None = None
        self.port = 0
        self._reuse_port = reuse_port

    async def _set_health(self, status: int) -> None:
        for service in ("", LSTM_SERVICE, V2_SERVICE):
            await self.health.set(service, status)

    async def start(self) -> int:
        """Listens (health NOT_SERVING until loaded) and serves /metrics; returns the port."""
        if not self.registry.ready:
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        target = address(self.settings.host, self.settings.port)
        credentials = server_credentials(self.settings)
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(target)
            else:
                self.port = self._server.add_secure_port(target, credentials)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {target}: {exc} (is the port in use?)") from exc
        if self.port == 0:
            raise StartupError(f"cannot listen on {target} (is the port in use?)")
        if self.settings.metrics_port and not self._reuse_port:
            registry = aggregate_registry() if multiprocess_mode() else self.metrics.registry
            self._metrics_http = serve_metrics(self.settings, registry)
        if self.settings.health_port:
            self._health_server = self._probe_server()
            await self._health_server.start()
        await self._server.start()
        return self.port

    def _probe_server(self) -> grpc.aio.Server:
        """--health-port: the health service alone, plaintext, on its own port."""
        server = grpc.aio.server(options=[("grpc.so_reuseport", int(self._reuse_port))])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        target = address(self.settings.host, self.settings.health_port)
        try:
            bound = server.add_insecure_port(target)
        except RuntimeError as exc:
            raise StartupError(
                f"cannot serve health on {target}: {exc} (is the port in use?)"
            ) from exc
        if bound == 0:
            raise StartupError(f"cannot serve health on {target} (is the port in use?)")
        return server

    async def load(self) -> None:
        """Loads and warms the models off the event loop, then reports SERVING."""
        models = await asyncio.to_thread(load_models, self.settings)
        serve_models(self.registry, models, self.settings, self.metrics)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.registry.shared_store is not None:
            self._store_watch = asyncio.get_running_loop().create_task(self._watch_store())
        # What start-up made lives as long as the process: the collector need not walk it again,
        # which makes the collection in each trim cheap (~0.01 ms, not ~5 ms).
        gc.collect()
        gc.freeze()
        self._trimming = asyncio.get_running_loop().create_task(_trim_heap_every(TRIM_INTERVAL_S))

    async def _watch_store(self) -> None:
        """The shared sequence store's reachability, as health service SEQUENCE_STORE_SERVICE:
        NOT_SERVING while sequence steps would be UNAVAILABLE (the server's own health stays
        SERVING: calls without a sequence are served)."""
        assert self.registry.shared_store is not None
        client = self.registry.shared_store.client
        status = health_pb2.HealthCheckResponse
        while True:
            try:
                await client.ping()
                reachable = True
            except Exception:  # redis-py's connection and timeout errors
                reachable = False
            await self.health.set(
                SEQUENCE_STORE_SERVICE, status.SERVING if reachable else status.NOT_SERVING
            )
            await asyncio.sleep(STORE_WATCH_S)

    def announce(self) -> None:
        """The start-up line: where it serves, with what protection, and where /metrics is."""
        security = [
            name
            for name, on in (
                ("TLS", self.settings.tls_cert),
                ("client certificates", self.settings.tls_client_ca),
                ("bearer tokens", self.settings.auth_token_file),
            )
            if on
        ]
        metrics = ""
        if self._metrics_http is not None:
            scheme = "https" if self.settings.metrics_tls else "http"
            where = address(self.settings.metrics_host, self._metrics_http.port)
            metrics = f"; metrics on {scheme}://{where}/metrics"
        log.info(
            "SERVING on %s%s%s",
            address(self.settings.host, self.port),
            f" ({', '.join(security)})" if security else "",
            metrics,
        )

    async def reload(self) -> None:
        """SIGHUP: the token file again, and the repository."""
        if self._tokens is not None:
            self._tokens.reread()
        await self.repository.reload()

    async def stop(self, grace: float | None = None) -> None:
        """Drains: NOT_SERVING, refuse new calls, finish in-flight ones, stop the batchers.

        New calls are refused by the servicers (UNAVAILABLE, retryable) for a moment before
        the listener closes: a call that reaches gRPC while it shuts down is CANCELLED
        instead, and a caller cannot tell whether it ran.
        """
        grace = self.settings.grace_period if grace is None else grace
        deadline = time.monotonic() + grace
        await self.health.enter_graceful_shutdown()
        self.registry.ready = False
        await asyncio.sleep(min(REFUSAL_WINDOW_S, grace / 4))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.registry.wait_idle(), max(0.0, deadline - time.monotonic()))
        await self._server.stop(max(0.0, deadline - time.monotonic()))
        if self._health_server is not None:
            await self._health_server.stop(0)
        await self.registry.stop()
        for task in (self._store_watch, self._trimming):
            if task is not None:
                task.cancel()
        if self.registry.shared_store is not None:
            await self.registry.shared_store.client.aclose()
        if self._metrics_http is not None:
            self._metrics_http.close()
        if self._tracing is not None:
            self._tracing.close()

    async def wait(self) -> None:
        await self._server.wait_for_termination()


async def _trim_heap_every(seconds: float) -> None:
    """Frees what waits for the garbage collector, then hands the heap back to the OS.

    gRPC keeps a failed or cancelled call's exception in a reference cycle with the frames
    that hold its messages (a call cut off with a 16 MB answer unsent keeps ~50 MB), and glibc
    keeps the heap a burst of large requests freed; malloc_trim returns it, off the event loop
    (it walks the heap). No trim without glibc."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    while True:
        await asyncio.sleep(seconds)
        gc.collect()
        if trim is not None:
            await asyncio.to_thread(trim, 0)


def _tracing(settings: Settings, exporter: Any) -> Tracing | None:
    """Tracing when asked for; opentelemetry is imported only then (the [tracing] extra)."""
    if not settings.otlp_endpoint and exporter is None:
        return None
    try:
        from lstm_serving.server.tracing import Tracing
    except ImportError as exc:
        raise StartupError(
            f"--otlp-endpoint needs OpenTelemetry ({exc}): install lstm-serving[tracing]"
        ) from exc
    return Tracing(exporter) if exporter is not None else Tracing.otlp(settings.otlp_endpoint)


async def serve(settings: Settings, reuse_port: bool = False) -> None:
    """Runs one server process until SIGTERM or SIGINT. A failed start closes what it opened."""
    server = LstmServer(settings, reuse_port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(server.reload()))
    try:
        if reuse_port:  # a worker listens once ready: the kernel may hand it connections at once
            await server.load()
            await server.start()
        else:  # alone: listen at once (health NOT_SERVING) so orchestrators see it starting
            await server.start()
            await server.load()
    except BaseException:
        await server.stop(grace=0)
        raise
    server.announce()
    poller = loop.create_task(_poll(server, settings.reload_interval))
    await stopping.wait()
    poller.cancel()
    log.info("draining (grace period %.1fs)", settings.grace_period)
    await server.stop()
    log.info("stopped")


async def _poll(server: LstmServer, interval: float) -> None:
    """--reload-interval: the repository only (tokens are re-read on SIGHUP)."""
    while interval > 0:
        await asyncio.sleep(interval)
        await server.repository.reload()
