"""The servers under test: how each is started, when it is ready, what memory it holds.

Over 250 lines: every server the benchmarks start, and the models they serve, in one place.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from lstm_serving.proto.v1 import lstm_pb2 as pb
from lstm_serving.proto.v1 import lstm_pb2_grpc as pb_grpc
from tests.helpers import free_port, serve_command

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MLSERVER_VENV = ROOT / ".venv-mlserver"
SEED = ROOT / "models/seed/1/model.onnx"


StartFn = Callable[[int, int], subprocess.Popen[bytes]]  # (port, metrics port) -> the server


@dataclass
class Server:
    """How to start one server under test, and what protocol the load generator speaks."""

    name: str
    start: StartFn
    protocol: str = "lstm"
    channels: int = 1
    metrics: bool = True
    pids: list[int] = field(default_factory=list)


def lstm_serve(
    repository: Path, *flags: str, python: Path | None = None, env: dict[str, str] | None = None
) -> StartFn:
    """lstm-serve as installed here, or run by another interpreter (`python`, with `env`)."""

    def start(port: int, metrics_port: int) -> subprocess.Popen[bytes]:
        metrics = ("--metrics-port", str(metrics_port), "--log-level", "warning")
        return subprocess.Popen(
            serve_command(repository, port, *metrics, *flags, python=python),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    return start


def echo_on(python: Path | None = None, env: dict[str, str] | None = None) -> StartFn:
    """The echo server, run by this interpreter or by `python` (with `env`)."""

    def start(port: int, metrics_port: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(python or sys.executable), str(ROOT / "benchmarks/echo_server.py"), str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    return start


echo = echo_on()


def mlserver(folder: Path) -> StartFn:
    def start(port: int, metrics_port: int) -> subprocess.Popen[bytes]:
        (folder / "settings.json").write_text(
            json.dumps(
                {
                    "grpc_port": port,
                    "http_port": free_port(),
                    "metrics_port": metrics_port,
                    "debug": False,
                }
            )
        )
        return subprocess.Popen(
            [str(MLSERVER_VENV / "bin/mlserver"), "start", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    return start


def mlserver_folder(models: dict[str, Path], directory: Path) -> Path:
    for name, path in models.items():
        model_dir = directory / name
        model_dir.mkdir(parents=True)
        shutil.copy(ROOT / "benchmarks/mlserver/runtime.py", model_dir / "runtime.py")
        (model_dir / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "implementation": "runtime.OnnxLstm",
                    "max_batch_size": 32,
                    "max_batch_time": 0.002,  # adaptive batching on
                    "parameters": {"uri": str(path)},
                }
            )
        )
    return directory


def wait_ready(
    target: str, protocol: str, process: subprocess.Popen[bytes], timeout: float = 60
) -> float:
    """Seconds until the server answers a readiness check."""
    began = time.monotonic()
    with grpc.insecure_channel(target) as channel:
        while time.monotonic() - began < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                if protocol == "lstm":
                    pb_grpc.LstmServiceStub(channel).DescribeModel(
                        pb.DescribeModelRequest(model="seed"), timeout=1
                    )
                    return time.monotonic() - began
                elif (
                    v2_grpc.GRPCInferenceServiceStub(channel)
                    .ModelReady(v2.ModelReadyRequest(name="seed"), timeout=1)
                    .ready
                ):
                    return time.monotonic() - began
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"{target} not ready after {timeout}s")


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (workers), in MiB."""
    total = 0.0
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    for p in [pid, *map(int, children.stdout.split())]:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += (
            int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            / 1024
        )
    return total


@contextmanager
def running(server: Server) -> Iterator[tuple[str, str | None, float]]:
    port, metrics_port = free_port(), free_port()
    process = server.start(port, metrics_port)
    try:
        ready = wait_ready(f"127.0.0.1:{port}", server.protocol, process)
        url = f"http://127.0.0.1:{metrics_port}/metrics" if server.metrics else None
        server.pids.append(process.pid)
        yield f"127.0.0.1:{port}", url, ready
    finally:
        try:
            os.killpg(
                process.pid, signal.SIGTERM
            ) if server.name == "mlserver" else process.terminate()
            process.wait(timeout=30)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            process.kill()


def ensure_mlserver_venv() -> bool:
    if (MLSERVER_VENV / "bin/mlserver").exists():
        return True
    print("creating .venv-mlserver (mlserver 1.7.1, uvloop 0.21.0) ...", file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
        subprocess.run(
            [
                str(MLSERVER_VENV / "bin/pip"),
                "install",
                "-q",
                "mlserver==1.7.1",
                "uvloop==0.21.0",
                "onnxruntime==1.32.0",
                "numpy<2.5",
            ],
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        print(f"MLServer could not be installed ({exc}); it is left out", file=sys.stderr)
        return False
    return True


def export_large(repository: Path) -> Path:
    """The large model (64 features -> 3 x LSTM(256)) exported into `repository`."""
    subprocess.run(
        [
            str(BIN / "lstm-export"),
            "--input-size",
            "64",
            "--layers",
            "256",
            "256",
            "256",
            "--name",
            "large",
            "--version",
            "1",
            "--repository",
            str(repository),
        ],
        check=True,
        capture_output=True,
    )
    return repository / "large/1/model.onnx"


TEXT_PROGRAM = """
import sys, torch
from torch import nn
class Text(nn.Module):  # IMDB-shaped: ids -> Embedding -> 2 x BiLSTM(64) -> sigmoid(fc(out[:, -1]))
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(5000, 64)
        self.lstm = nn.LSTM(64, 64, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(128, 1)
    def forward(self, ids):
        return torch.sigmoid(self.fc(self.lstm(self.embedding(ids))[0][:, -1]))
torch.manual_seed(0)
program = torch.export.export(Text().eval(), (torch.zeros(2, 200, dtype=torch.int64),))
torch.export.save(program, sys.argv[1])
"""


def export_text(repository: Path) -> Path:
    """A text model (token ids, vocabulary 5,000, 2 bidirectional LSTM(64) layers, a sigmoid
    head) saved as a torch.export program and exported with --torch into `repository`."""
    program = repository.parent / "text.pt2"
    subprocess.run([sys.executable, "-c", TEXT_PROGRAM, str(program)], check=True, cwd=ROOT)
    exported = ["--torch", str(program), "--name", "text", "--version", "1"]
    subprocess.run(
        [str(BIN / "lstm-export"), *exported, "--repository", str(repository)],
        check=True,
        capture_output=True,
    )
    return repository / "text/1/model.onnx"


def raw_ort(model_file: Path, batch: int, steps: int, threads: int, seconds: float) -> float:
    """Sequences/s of Model.run in process: the most any server can give."""
    code = f"""
import time, numpy as np
from pathlib import Path
from lstm_serving.core.runtime import Model
m = Model(Path({str(model_file)!r}), "m", 1, "cpu", {threads})
rng, e, f = np.random.default_rng(0), m.architecture.embedding, m.architecture.input_size
if e is None: x = rng.standard_normal(({batch}, {steps}, f)).astype(np.float32)
else: x = rng.integers(1, e.vocabulary, size=({batch}, {steps}))  # token ids
n = np.full({batch}, {steps}, np.int32)
for _ in range(3): m.run(x, n, ["last_hidden"])
count, began = 0, time.perf_counter()
while time.perf_counter() - began < {seconds}:
    m.run(x, n, ["last_hidden"]); count += 1
print(count * {batch} / (time.perf_counter() - began))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return float(out.stdout)
