"""Real lstm-serve and lstm-client processes for tests: start, wait for SERVING, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import BIN

SERVE = str(BIN / "lstm-serve")
CLIENT = str(BIN / "lstm-client")
EXPORT = str(BIN / "lstm-export")


_RESERVED: list[socket.socket] = []


def free_port() -> int:
    """A loopback port reserved for the rest of the test session.

    The socket stays bound (SO_REUSEADDR, never listening), so no other process and no
    outgoing connection can take the port between now and when a server binds it; servers
    (gRPC, prometheus-client, nginx) set SO_REUSEADDR and bind it all the same. Picking a free
    port and releasing it lost that race here: "Address already in use" once a run.
    """
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    _RESERVED.append(holder)
    return int(holder.getsockname()[1])


def export(*args: str) -> subprocess.CompletedProcess[str]:
    """lstm-export as a user runs it."""
    return subprocess.run([EXPORT, *args], capture_output=True, text=True, timeout=120)


def client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLIENT, "--target", f"127.0.0.1:{port}", *args], capture_output=True, text=True, timeout=60
    )


def wait_serving(process: subprocess.Popen[str], port: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"lstm-serve exited {process.returncode}: {err}")
        if client(port, "--timeout", "1", "health").stdout.strip() == "SERVING":
            return
        time.sleep(0.2)
    raise AssertionError("lstm-serve did not report SERVING in time")


def start(
    repository: Path, port: int | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """lstm-serve on loopback, CPU, no /metrics unless args say otherwise; port None: from env."""
    port_args = [] if port is None else ["--port", str(port)]
    return subprocess.Popen(
        [
            SERVE,
            "--repository",
            str(repository),
            "--host",
            "127.0.0.1",
            *port_args,
            "--device",
            "cpu",
            "--metrics-port",
            "0",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )


def worker_pids(process: subprocess.Popen[str]) -> list[str]:
    found = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True)
    return found.stdout.split()


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    return process.returncode, err
