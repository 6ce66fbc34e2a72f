"""`lstm-serve`: wiring of the gRPC server, health, reflection, signals and worker processes.

Start-up order: listen with health NOT_SERVING, load and warm every model in a thread, then
SERVING. On SIGTERM/SIGINT: NOT_SERVING at once, refuse new calls, let in-flight ones finish
within --grace-period, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lstm.kserve.v2 import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from lstm.v1 import lstm_pb2, lstm_pb2_grpc
from service.config import Settings, parse_settings
from service.kserve import InferenceServicer
from service.metrics import (
    MULTIPROC_ENV,
    Metrics,
    MetricsEndpoint,
    aggregate_registry,
    mark_worker_dead,
    multiprocess_mode,
    reset_multiprocess_dir,
)
from service.registry import Registry, load_model, load_models, serve_models
from service.runtime import ModelLoadError, ProviderError, scan_repository
from service.security import BearerTokenInterceptor, read_tokens, server_credentials
from service.servicers import LstmServicer

log = logging.getLogger("lstm-serve")

LSTM_SERVICE = lstm_pb2.DESCRIPTOR.services_by_name["LstmService"].full_name
V2_SERVICE = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
METRICS_TMP_PREFIX = "lstm-serve-metrics-"
REFUSAL_WINDOW_S = 0.5  # on shutdown: new calls get UNAVAILABLE this long before the port closes
SERVICES = (LSTM_SERVICE, V2_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)


class StartupError(Exception):
    """The server cannot start; the message says why and what to do."""


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class LstmServer:
    """One server process: grpc.aio server, health, and the models it serves."""

    def __init__(self, settings: Settings, reuse_port: bool = False) -> None:
        self.settings = settings
        self.registry = Registry()
        self.metrics = Metrics()
        self.health = health.aio.HealthServicer()
        interceptors = []
        if settings.auth_token_file is not None:
            try:
                tokens = read_tokens(settings.auth_token_file)
            except (OSError, ValueError) as exc:
                raise StartupError(f"--auth-token-file: {exc}") from exc
            interceptors.append(BearerTokenInterceptor(tokens))
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.so_reuseport", int(reuse_port)),
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
            ],
        )
        lstm_pb2_grpc.add_LstmServiceServicer_to_server(
            LstmServicer(self.registry, settings, self.metrics), self._server
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.registry, settings, self.metrics), self._server
        )
        self._metrics_http: MetricsEndpoint | None = None
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if settings.reflection:
            reflection.enable_server_reflection(SERVICES, self._server)
        self.port = 0
        self._reuse_port = reuse_port  # a worker: the parent serves /metrics for all
        self._reload_lock = asyncio.Lock()
        self._rejected: dict[tuple[str, int], tuple[float, int]] = {}  # file stat when refused

    async def _set_health(self, status: int) -> None:
        for service in ("", LSTM_SERVICE, V2_SERVICE):
            await self.health.set(service, status)

    async def start(self) -> int:
        """Listens (health NOT_SERVING); returns the bound port."""
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
        await self._server.start()
        if self.settings.metrics_port and not self._reuse_port:
            registry = aggregate_registry() if multiprocess_mode() else self.metrics.registry
            self._metrics_http = MetricsEndpoint(
                self.settings.metrics_port, self.settings.host, registry
            )
        return self.port

    async def load(self) -> None:
        """Loads and warms the models off the event loop, then reports SERVING."""
        models = await asyncio.to_thread(load_models, self.settings)
        serve_models(self.registry, models, self.settings, self.metrics)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        security = [
            name
            for name, on in (
                ("TLS", self.settings.tls_cert),
                ("client certificates", self.settings.tls_client_ca),
                ("bearer tokens", self.settings.auth_token_file),
            )
            if on
        ]
        log.info(
            "SERVING on %s%s",
            address(self.settings.host, self.port),
            f" ({', '.join(security)})" if security else "",
        )

    async def reload(self) -> None:
        """Serves versions new to the repository, drains removed ones; a bad file changes
        nothing (logged, counted in lstm_model_reloads_total{result="rejected"})."""
        async with self._reload_lock:
            try:
                files = {(f.name, f.version): f for f in scan_repository(self.settings.repository)}
            except ModelLoadError as exc:
                log.error("reload skipped, nothing changed: %s", exc)
                return
            loaded = self.registry.loaded()
            for key in sorted(files.keys() - loaded):
                stat = files[key].path.stat()
                if self._rejected.get(key) == (stat.st_mtime, stat.st_size):
                    continue  # refused before and unchanged since
                try:
                    model = await asyncio.to_thread(load_model, files[key], self.settings)
                except (ModelLoadError, ProviderError) as exc:
                    self._rejected[key] = (stat.st_mtime, stat.st_size)
                    self.metrics.reloads.labels(key[0], "rejected").inc()
                    log.error("rejected %s version %d, still serving the others: %s", *key, exc)
                    continue
                serve_models(self.registry, [model], self.settings, self.metrics)
                self.metrics.reloads.labels(key[0], "loaded").inc()
                log.info("now serving %s version %d", *key)
            for name, version in sorted(loaded - files.keys()):
                served = self.registry.remove(name, version)
                self.metrics.model_info.remove(name, str(version), served.model.provider)
                await served.batcher.drain()
                self.metrics.reloads.labels(name, "removed").inc()
                log.info("removed %s version %d (drained)", name, version)

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
        await self.registry.stop()
        if self._metrics_http is not None:
            self._metrics_http.close()

    async def wait(self) -> None:
        await self._server.wait_for_termination()


async def serve(settings: Settings, reuse_port: bool = False) -> None:
    """Runs one server process until SIGTERM or SIGINT."""
    server = LstmServer(settings, reuse_port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(server.reload()))
    await server.start()
    await server.load()
    poller = loop.create_task(_poll(server, settings.reload_interval))
    await stopping.wait()
    poller.cancel()
    log.info("draining (grace period %.1fs)", settings.grace_period)
    await server.stop()
    log.info("stopped")


async def _poll(server: LstmServer, interval: float) -> None:
    while interval > 0:
        await asyncio.sleep(interval)
        await server.reload()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host.strip("[]"), 0))
        return int(s.getsockname()[1])


def _run_process(settings: Settings, reuse_port: bool) -> None:
    try:
        asyncio.run(serve(settings, reuse_port))
    except (StartupError, ModelLoadError, ProviderError) as exc:
        log.error("%s", exc)
        sys.exit(1)


def _run_workers(settings: Settings) -> int:
    """Forks the workers before any gRPC server, ONNX Runtime session or thread exists.

    The parent serves the summed /metrics, forwards SIGTERM/SIGINT, and marks each worker
    that exits as dead in the metrics. Returns the worst exit code.
    """
    if settings.port == 0:
        settings = Settings(**{**settings.__dict__, "port": _free_port(settings.host)})
    if settings.metrics_port:
        reset_multiprocess_dir()
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_run_process, args=(settings, True), name=f"worker-{i}")
        for i in range(settings.workers)
    ]
    for process in workers:
        process.start()
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = stopping or signum != signal.SIGHUP
        for process in workers:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    metrics_http = None
    if settings.metrics_port:  # after the fork: the workers must not inherit its socket
        metrics_http = MetricsEndpoint(settings.metrics_port, settings.host, aggregate_registry())
    log.info("started %d workers on port %d", len(workers), settings.port)
    alive = {process.sentinel: process for process in workers}
    codes = []
    while alive:
        for sentinel in multiprocessing.connection.wait(list(alive)):
            process = alive.pop(cast(int, sentinel))  # we waited on the sentinels (ints)
            process.join()
            if multiprocess_mode() and process.pid is not None:
                mark_worker_dead(process.pid)
            if stopping:
                codes.append(process.exitcode or 0)
                continue
            log.error(
                "%s (pid %s) exited with code %s; starting a new one",
                process.name,
                process.pid,
                process.exitcode,
            )
            workers.remove(process)
            replacement = context.Process(
                target=_run_process, args=(settings, True), name=process.name
            )
            replacement.start()
            workers.append(replacement)
            alive[replacement.sentinel] = replacement
    if metrics_http is not None:
        metrics_http.close()
        directory = Path(os.environ[MULTIPROC_ENV])
        if directory.name.startswith(METRICS_TMP_PREFIX):  # ours, from the restart below
            shutil.rmtree(directory, ignore_errors=True)
    return max(codes, key=abs, default=0)


def _restart_with_multiprocess_metrics(argv: Sequence[str] | None) -> None:
    """prometheus-client picks its multiprocess mode at import: set it, then start afresh."""
    os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix=METRICS_TMP_PREFIX)
    args = list(sys.argv[1:] if argv is None else argv)
    os.execv(sys.executable, [sys.executable, "-m", "service.server", *args])


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    try:  # fail fast, before forking, on a repository with nothing to serve
        scan_repository(settings.repository)
    except ModelLoadError as exc:
        log.error("%s", exc)
        return 1
    if settings.workers > 1:
        if settings.metrics_port and not multiprocess_mode():
            _restart_with_multiprocess_metrics(argv)
        return _run_workers(settings)
    _run_process(settings, reuse_port=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
