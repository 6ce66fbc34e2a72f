"""`lstm-serve`: settings and logging, then one server process or `--workers` of them."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import sys
import tempfile
from collections.abc import Sequence

from lstm_serving.core.metrics import METRICS_TMP_PREFIX, MULTIPROC_ENV, multiprocess_mode
from lstm_serving.core.repository import scan
from lstm_serving.core.settings import Settings, parse_settings
from lstm_serving.errors import ConfigurationError
from lstm_serving.server.app import serve
from lstm_serving.server.workers import run_workers

log = logging.getLogger("lstm-serve")


def run_process(settings: Settings, reuse_port: bool) -> None:
    """One server process (a worker when `reuse_port`); exits 1 with the reason on a bad start."""
    try:
        asyncio.run(serve(settings, reuse_port))
    except ConfigurationError as exc:
        log.error("%s", exc)
        sys.exit(1)


def _restart_with_multiprocess_metrics(argv: Sequence[str] | None) -> None:
    """prometheus-client picks its multiprocess mode at import: set it, then start afresh."""
    os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix=METRICS_TMP_PREFIX)
    args = list(sys.argv[1:] if argv is None else argv)
    os.execv(sys.executable, [sys.executable, "-m", "lstm_serving.server.main", *args])


def raise_open_files_limit() -> None:
    """Every connection is a descriptor: the soft limit (often 1,024) goes up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log.info("open files limit: %d (was %d; hard limit %d)", hard, soft, hard)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    raise_open_files_limit()
    try:  # fail fast, before forking, on a repository with nothing to serve
        scan(settings)
        if settings.workers == 1:
            run_process(settings, reuse_port=False)
            return 0
        if settings.metrics_port and not multiprocess_mode():
            _restart_with_multiprocess_metrics(argv)
        return run_workers(settings, run_process)
    except ConfigurationError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
