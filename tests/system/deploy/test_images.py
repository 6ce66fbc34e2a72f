"""The Dockerfile's real images, built and run here with podman (daemonless; no Docker engine).

What differs from `docker build` on a machine with network, and only that: the base image is a
stand-in for python:3.11-slim (Debian bookworm's python3.11 from debootstrap, imported into
podman once and kept), and pip installs from a wheelhouse made here from the pins (the
Dockerfile's offline path, PIP_NO_INDEX=1). Then, as docker-compose runs them: the export
container writes the model into a volume with the compose file's command and variables, and
the server serves it from a read-only root filesystem. `make image-test` runs this module
alone; `make test` runs it with the rest (it skips, saying why, without podman).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from lstm_serving.client.client import LstmClient
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from lstm_serving.protocols.kserve_v2 import build_infer_request, decode_infer_response
from tests.helpers import BIN, ROOT, free_port, start, stop, wait_serving

pytestmark = pytest.mark.skipif(
    shutil.which("podman") is None or shutil.which("debootstrap") is None,
    reason="podman and debootstrap are not installed (`make system-deps` installs them as root)",
)
BASE = "localhost/python:3.11-slim"  # the stand-in, under the name the Dockerfile asks for
SERVER, EXPORT = "localhost/lstm-serving/server:test", "localhost/lstm-serving/export:test"
RUNTIME = ["--runtime", "runc"]  # crun refuses this machine's hybrid cgroups
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]  # podman's defaults
# raise limits this machine does not allow
X = np.linspace(-1, 1, 2 * 7 * 2, dtype=np.float32).reshape(2, 7, 2)


def podman(*args: str, timeout: float = 600, check: bool = True) -> str:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {done.returncode}\n{done.stderr[-3000:]}")
    return done.stdout.strip()


def stand_in_base() -> None:
    """Debian bookworm with python3.11 as python:3.11-slim, built once per machine (~45 s)."""
    if subprocess.run(["podman", "image", "exists", BASE], check=False).returncode == 0:
        return
    rootfs = ROOT / "build/rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3.11,python3.11-venv,"
         "python3-pip,ca-certificates", "bookworm", str(rootfs), "http://deb.debian.org/debian"],
        check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    (rootfs / "usr/local/bin/python").symlink_to("/usr/bin/python3.11")
    (rootfs / "usr/local/bin/pip").symlink_to("/usr/bin/pip3")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(
        ["podman", "import", "--change", "ENV PIP_BREAK_SYSTEM_PACKAGES=1", "-", BASE],
        stdin=tar.stdout, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    assert tar.wait() == 0
    shutil.rmtree(rootfs)


@pytest.fixture(scope="module")
def built() -> dict[str, float]:
    """Seconds each step took: the base (0 when kept), the wheelhouse, each target."""
    took: dict[str, float] = {}
    began = time.monotonic()
    stand_in_base()
    took["base"] = time.monotonic() - began
    began = time.monotonic()
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "download", "--quiet", "-c", "constraints.txt",
         "-d", "wheelhouse", ".[server,tracing,export]", "torch==2.13.0", "hatchling"],
        cwd=ROOT, check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    took["wheelhouse"] = time.monotonic() - began
    for target, tag in (("server", SERVER), ("export", EXPORT)):
        began = time.monotonic()
        podman("build", *RUNTIME, *LIMITS, "--format", "docker", "--build-arg", "PIP_NO_INDEX=1",
               "--target", target, "-t", tag, str(ROOT), timeout=1800)  # fmt: skip
        took[target] = time.monotonic() - began
    print(f"image build seconds: {json.dumps({k: round(v, 1) for k, v in took.items()})}")
    return took


def compose_export_command() -> tuple[list[str], dict[str, str]]:
    """The compose file's export job: its entrypoint and command, its variables' defaults."""
    job = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["export"]
    env = {k: str(v).split(":-", 1)[-1].rstrip("}") for k, v in job["environment"].items()}
    command = [part.replace("$$", "$") for part in job["command"]]
    return [*job["entrypoint"], *command], env


@pytest.fixture(scope="module")
def volume(built: dict[str, float]) -> Iterator[str]:
    """A models volume that the export image filled, run as docker-compose runs it."""
    name = f"lstm-image-test-{time.monotonic_ns()}"
    podman("volume", "create", name)
    command, env = compose_export_command()
    variables = [f"--env={key}={value}" for key, value in env.items()]
    podman("run", "--rm", *RUNTIME, *LIMITS, "--network", "none", "--read-only",
           "-v", f"{name}:/models", "-v", f"{ROOT / 'weights'}:/weights:ro", *variables,
           "--entrypoint", command[0], EXPORT, *command[1:])  # fmt: skip
    yield name
    podman("volume", "rm", "-f", name, check=False)


def host_answers(tmp: Path, command: list[str], env: dict[str, str]) -> dict[str, np.ndarray]:
    """The same export and the same calls on this machine, without containers."""
    script = command[-1].replace("/models", str(tmp)).replace("/weights", str(ROOT / "weights"))
    script = script.replace("lstm-export", str(BIN / "lstm-export"))
    environment = {**os.environ, **env}
    subprocess.run(["sh", "-c", script], env=environment, check=True, capture_output=True)
    port = free_port()
    server = start(tmp, port)
    try:
        wait_serving(server, port)
        return calls(port)
    finally:
        stop(server)


def calls(port: int) -> dict[str, np.ndarray]:
    """A Predict and a ModelInfer of the same input."""
    with LstmClient(f"127.0.0.1:{port}") as client:
        predicted = client.predict("seed", X).last_hidden
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            build_infer_request("seed", X), timeout=10
        )
    assert predicted is not None
    return {"predict": predicted, "v2": decode_infer_response(answer)["last_hidden"].ravel()}


def unused_port() -> int:
    """A free port, released at once: podman's port forwarding binds it itself."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_server_container_serves_what_the_host_serves(volume: str, tmp_path: Path) -> None:
    """The compose file's server command on the export job's volume, root filesystem
    read-only: SERVING, the same answers as the host, /metrics, its HEALTHCHECK, non-root,
    and SIGTERM drained to exit 0 within the grace period."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    args = compose["services"]["server"]["command"]
    port, metrics = unused_port(), unused_port()
    name = f"lstm-image-test-server-{time.monotonic_ns()}"
    podman("run", "-d", *RUNTIME, *LIMITS, "--name", name, "--read-only",
           "-v", f"{volume}:/models:ro", "-p", f"127.0.0.1:{port}:50051",
           "-p", f"127.0.0.1:{metrics}:8002", SERVER, *args)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            with (
                LstmClient(f"127.0.0.1:{port}", timeout=2) as client,
                contextlib.suppress(grpc.RpcError),
            ):
                if client.health() == "SERVING":
                    break
            assert time.monotonic() < deadline, podman("logs", name)
            time.sleep(0.5)
        answers = calls(port)
        expected = host_answers(tmp_path / "models", *compose_export_command())
        for key, value in expected.items():
            assert np.array_equal(answers[key], value), key  # bit for bit
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as page:
            exposition = page.read().decode()
        assert 'lstm_requests_total{code="OK",model="seed",rpc="Predict",version="1"} 1.0' in (
            exposition
        )
        podman("healthcheck", "run", name)  # the image's HEALTHCHECK command, exit 0
        assert podman("exec", name, "id", "-u") == "10001"
        assert podman("exec", name, "id", "-g") == "10001"  # the group the manifests run as
        read_only = subprocess.run(["podman", "exec", name, "touch", "/app/x"], check=False)
        assert read_only.returncode != 0
        began = time.monotonic()
        podman("stop", "-t", "30", name)
        stopped_after = time.monotonic() - began
        assert podman("inspect", name, "--format", "{{.State.ExitCode}}") == "0"
        assert stopped_after < 12  # --grace-period 10 s (default), not the 30 s kill
        logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True, check=True)
        assert "draining" in logs.stderr and "stopped" in logs.stderr
    finally:
        podman("rm", "-f", name, check=False)


def test_image_sizes_and_the_server_image_has_no_torch(built: dict[str, float]) -> None:
    sizes = {
        tag: int(podman("image", "inspect", tag, "--format", "{{.Size}}")) // 2**20
        for tag in (BASE, SERVER, EXPORT)
    }
    print(f"image sizes (MiB): {json.dumps(sizes)}")
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
    podman("run", "--rm", *RUNTIME, *LIMITS, "--entrypoint", "python", SERVER, "-c", probe)
    assert sizes[SERVER] - sizes[BASE] < 300 < sizes[EXPORT] - sizes[BASE]
