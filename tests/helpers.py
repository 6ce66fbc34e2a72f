"""What tests and benchmarks share: paths, a reserved free port, real lstm-serve processes and
in-process servers, the health check, and a /metrics scraper parsed with prometheus-client.

The one helpers module: test modules import from here, never from each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lstm_serving.contract import Architecture, LayerSpec, parameter_count
from lstm_serving.core.requests import InferRequest
from lstm_serving.core.settings import Settings
from lstm_serving.core.validation import Checked, Limits, check_request, size_request
from lstm_serving.server.app import LstmServer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SEED_REPOSITORY = ROOT / "models"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def architecture(input_size: int, units: list[int], bidirectional: bool = False) -> Architecture:
    """An architecture record with every layer's sizes and parameter counts derived from the
    widths, as an export would write it (no head): for tests of the checks that read one."""
    directions = 2 if bidirectional else 1
    layers, width = [], input_size
    for h in units:
        layers.append(
            LayerSpec(
                units=h,
                direction="bidirectional" if bidirectional else "forward",
                input_size=width,
                parameters=parameter_count(width, h, directions),
                keras_parameters=parameter_count(width, h, directions, keras=True),
            )
        )
        width = directions * h
    return Architecture(input_size=input_size, layers=tuple(layers), opset=17)


async def start_server(**overrides: Any) -> LstmServer:
    """In process: loopback, ephemeral port, no /metrics endpoint (tests read the registry)."""
    settings = Settings(
        **{"host": "127.0.0.1", "port": 0, "metrics_port": 0, "device": "cpu", **overrides}
    )
    server = LstmServer(settings)
    await server.start()
    await server.load()
    return server


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


def health(port: int, service: str = "", timeout: float = 1.0) -> str:
    """The health service's answer (SERVING, NOT_SERVING, ...), asked in process as a kubelet
    asks it; UNAVAILABLE while nothing listens."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = channel.unary_unary(
            HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            answer = check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return str(exc.code().name)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def wait_serving(process: subprocess.Popen[str], port: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"lstm-serve exited {process.returncode}: {err}")
        if health(port) == "SERVING":
            return
        time.sleep(0.05)
    raise AssertionError("lstm-serve did not report SERVING in time")


def serve_command(
    repository: Path, port: int | None, *args: str, python: Path | None = None
) -> list[str]:
    """lstm-serve on loopback, CPU, no /metrics unless args say otherwise (a later flag wins);
    port None: from the environment; `python`: run by another interpreter."""
    program = [str(python), "-m", "lstm_serving.server.main"] if python else [SERVE]
    port_args = [] if port is None else ["--port", str(port)]
    return [
        *program,
        *("--repository", str(repository), "--host", "127.0.0.1", *port_args),
        *("--device", "cpu", "--metrics-port", "0", *args),
    ]


def start(
    repository: Path, port: int | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`serve_command` started, its output kept for the test to read."""
    return subprocess.Popen(
        serve_command(repository, port, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )


@contextlib.contextmanager
def serving_with_metrics(repository: Path, *args: str) -> Iterator[tuple[int, int]]:
    """`start` with /metrics on a port of its own, until SERVING; (port, metrics port). On
    leaving: SIGTERM, and a drain that must exit 0."""
    port, metrics_port = free_port(), free_port()
    process = start(repository, port, *args, "--metrics-port", str(metrics_port))
    try:
        wait_serving(process, port)
        yield port, metrics_port
    finally:
        code, err = stop(process)
        assert code == 0, err


def worker_pids(process: subprocess.Popen[str]) -> list[str]:
    found = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True)
    return found.stdout.split()


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    return process.returncode, err


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """A Prometheus exposition, parsed by prometheus-client: (name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def batches_run(server: LstmServer, model: str = "seed") -> float:
    """ONNX Runtime runs of `model` so far, from the server's own metrics (a batch is recorded
    just after its callers are answered: one loop turn later)."""
    await asyncio.sleep(0.01)
    exposition = generate_latest(server.metrics.registry).decode()
    return value(parse(exposition), "lstm_batch_size_count", model=model)


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse(response.read().decode())


def export_text_model(repository: Path, name: str = "text", vocabulary: int = 30) -> Path:
    """A small PyTorch text model (ids -> Embedding -> LSTM -> fc(out[:, -1])), saved as a
    torch.export program and exported with lstm-export --torch into `repository`."""
    import torch  # the export stage's, loaded only by the tests that make a text model

    from lstm_export.cli import main as export_main

    class TextModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(vocabulary, 4)
            self.lstm = torch.nn.LSTM(4, 5, batch_first=True)
            self.fc = torch.nn.Linear(5, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            y: torch.Tensor = self.fc(self.lstm(self.embedding(ids))[0][:, -1])
            return y

    torch.manual_seed(0)
    program = repository.parent / f"{name}.pt2"
    example = (torch.zeros(2, 6, dtype=torch.int64),)
    torch.export.save(torch.export.export(TextModel().eval(), example), str(program))
    exported = ["--torch", str(program), "--name", name, "--version", "1"]
    if export_main([*exported, "--repository", str(repository)]) != 0:
        raise AssertionError(f"lstm-export --torch {program} failed")
    return repository / name / "1" / "model.onnx"


class RedisServer:
    """Debian's redis-server on a free port of loopback, without persistence: the shared
    sequence store of the tests and benchmarks; stopped and started again on the same port."""

    def __init__(self, directory: Path) -> None:
        self.port, self.directory = free_port(), directory
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def kustomize(folder: Path, *flags: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` of a folder, its objects parsed."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", *flags, str(folder)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return list(yaml.safe_load_all(rendered.stdout))


def validated(request: InferRequest, arch: Architecture, limits: Limits) -> Checked:
    """A request through every check the data plane makes, without a model loaded."""
    return check_request(request, arch, size_request(request, arch, limits))
