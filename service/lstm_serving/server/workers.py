"""`--workers N`: N server processes sharing one port (SO_REUSEPORT), forked before any gRPC
server, ONNX Runtime session or thread exists.

The parent holds the port reserved for its whole life (grpc's multiprocessing example), so
no other process can take it between a worker's exit and its replacement; it serves the
summed /metrics, forwards SIGTERM/SIGINT/SIGHUP, and replaces a worker that dies (backing off
when it keeps dying: a model it cannot load must not become a fork loop). A worker loads its
models before it listens, so the kernel never hands a connection to a worker not yet ready.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import cast

from lstm_serving.core.metrics import (
    METRICS_TMP_PREFIX,
    MULTIPROC_ENV,
    aggregate_registry,
    mark_worker_dead,
    multiprocess_mode,
    reset_multiprocess_dir,
)
from lstm_serving.core.settings import Settings
from lstm_serving.errors import StartupError
from lstm_serving.server.metrics_endpoint import serve_metrics

log = logging.getLogger("lstm-serve")

Worker = Callable[[Settings, bool], None]
# A worker that exits this soon after its start, again and again, is replaced ever later:
# immediately the first time, then after 0.5 s, 1 s, 2 s, ... up to 30 s.
QUICK_EXIT_S = 10.0
BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Binds host:port (port 0: a free one) without listening, as the workers will (gRPC sets
    SO_REUSEADDR and SO_REUSEPORT), and yields the port while holding it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            raise StartupError(
                f"cannot reserve port {port} on {host}: {exc.strerror} (is the port in use?)"
            ) from exc
        yield int(sock.getsockname()[1])


def run_workers(settings: Settings, worker: Worker) -> int:
    """Runs `worker(settings, True)` in N processes until they stop; returns the worst code."""
    with reserve_port(settings.host, settings.port) as port:
        return _supervise(dataclasses.replace(settings, port=port), worker)


def _supervise(settings: Settings, worker: Worker) -> int:
    if settings.metrics_port:
        reset_multiprocess_dir()
    context = multiprocessing.get_context("fork")

    def spawn(name: str) -> BaseProcess:
        process = context.Process(target=worker, args=(settings, True), name=name)
        process.start()
        return process

    workers = [spawn(f"worker-{i}") for i in range(settings.workers)]
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
        metrics_http = serve_metrics(settings, aggregate_registry())
    log.info("started %d workers on port %d", len(workers), settings.port)
    alive = {process.sentinel: process for process in workers}
    started = {process.sentinel: time.monotonic() for process in workers}
    quick_exits: dict[str, int] = {}  # worker name -> exits in a row soon after its start
    due: list[tuple[float, str]] = []  # replacements waiting out their backoff
    codes = []
    while alive or due:
        wait = max(0.0, min(at for at, _ in due) - time.monotonic()) if due else None
        for sentinel in multiprocessing.connection.wait(list(alive), wait):
            process = alive.pop(cast(int, sentinel))  # we waited on the sentinels (ints)
            process.join()
            workers.remove(process)
            if multiprocess_mode() and process.pid is not None:
                mark_worker_dead(process.pid)
            if stopping:
                codes.append(process.exitcode or 0)
                continue
            lived = time.monotonic() - started.pop(cast(int, sentinel))
            quick = quick_exits[process.name] = (
                quick_exits.get(process.name, 0) + 1 if lived < QUICK_EXIT_S else 0
            )
            delay = 0.0 if quick <= 1 else min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (quick - 2))
            log.error(
                "%s (pid %s) exited with code %s after %.1f s; starting a new one%s",
                process.name,
                process.pid,
                process.exitcode,
                lived,
                f" in {delay:g} s (backoff: it keeps exiting soon after it starts)"
                if delay
                else "",
            )
            due.append((time.monotonic() + delay, process.name))
        if stopping:
            due.clear()
        for at, name in [d for d in due if d[0] <= time.monotonic()]:
            due.remove((at, name))
            replacement = spawn(name)
            workers.append(replacement)
            alive[replacement.sentinel] = replacement
            started[replacement.sentinel] = time.monotonic()
    if metrics_http is not None:
        metrics_http.close()
        directory = Path(os.environ[MULTIPROC_ENV])
        if directory.name.startswith(METRICS_TMP_PREFIX):  # made by main() for this run
            shutil.rmtree(directory, ignore_errors=True)
    return max(codes, key=abs, default=0)
