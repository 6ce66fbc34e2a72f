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
import threading
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
from tests.helpers import BIN, ROOT, free_port, kustomize, start, stop, wait_serving

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
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3.11,python3.11-venv,python3-pip,ca-certificates",
            "bookworm",
            str(rootfs),
            "http://deb.debian.org/debian",
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    (rootfs / "usr/local/bin/python").symlink_to("/usr/bin/python3.11")
    (rootfs / "usr/local/bin/pip").symlink_to("/usr/bin/pip3")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(
        ["podman", "import", "--change", "ENV PIP_BREAK_SYSTEM_PACKAGES=1", "-", BASE],
        stdin=tar.stdout,
        check=True,
        capture_output=True,
        timeout=600,
    )
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
        [
            str(BIN / "python"),
            "-m",
            "pip",
            "download",
            "--quiet",
            "-c",
            "constraints.txt",
            "-d",
            "wheelhouse",
            ".[server,tracing,export]",
            "torch==2.13.0",
            "hatchling",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=900,
    )
    took["wheelhouse"] = time.monotonic() - began
    for target, tag in (("server", SERVER), ("export", EXPORT)):
        began = time.monotonic()
        podman(
            "build",
            *RUNTIME,
            *LIMITS,
            "--format",
            "docker",
            "--build-arg",
            "PIP_NO_INDEX=1",
            "--target",
            target,
            "-t",
            tag,
            str(ROOT),
            timeout=1800,
        )
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
    podman(
        "run",
        "--rm",
        *RUNTIME,
        *LIMITS,
        "--network",
        "none",
        "--read-only",
        "-v",
        f"{name}:/models",
        "-v",
        f"{ROOT / 'weights'}:/weights:ro",
        *variables,
        "--entrypoint",
        command[0],
        EXPORT,
        *command[1:],
    )
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
    podman(
        "run",
        "-d",
        *RUNTIME,
        *LIMITS,
        "--name",
        name,
        "--read-only",
        "-v",
        f"{volume}:/models:ro",
        "-p",
        f"127.0.0.1:{port}:50051",
        "-p",
        f"127.0.0.1:{metrics}:8002",
        SERVER,
        *args,
    )
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


# --- the Kubernetes manifests, played by podman ---------------------------------------------

KUBERNETES = ROOT / "deploy/kubernetes"
OVERLAY_IMAGES = {"lstm-serving/server": SERVER, "lstm-serving/export": EXPORT}
needs_kube_play = pytest.mark.skipif(
    shutil.which("kubectl") is None or shutil.which("catatonit") is None,
    reason="kubectl (renders kustomize) or catatonit (podman's pod pause process) is missing",
)


def podman_conf(tmp_path: Path) -> dict[str, str]:
    """`podman kube play` takes no --ulimit or --runtime: the same limits and runtime as the
    other containers here, through a containers.conf."""
    conf = tmp_path / "containers.conf"
    conf.write_text(
        '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        '[engine]\nruntime = "runc"\n'
    )
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def as_played_pod(overlay: str, name: str, ports: dict[str, int]) -> dict[str, object]:
    """The overlay's Deployment as the Pod its ReplicaSet makes, for podman 4.3: the images
    this module built under the overlay's names, hostPorts so podman publishes each port (its
    default collides), and restartPolicy OnFailure: podman 4.3 gives init containers the pod's
    policy, and under Always it restarts the finished export before it removes it."""
    rendered = kustomize(KUBERNETES / "overlays" / overlay)
    (deployment,) = [o for o in rendered if o["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    spec = template["spec"]
    for container in [*spec["initContainers"], *spec["containers"]]:
        image, tag = container["image"].rsplit(":", 1)
        assert tag != "latest" and container["imagePullPolicy"] == "IfNotPresent"
        container["image"] = OVERLAY_IMAGES[image]
        for port in container.get("ports", []):
            port["hostPort"] = ports[port["name"]]
    spec["restartPolicy"] = "OnFailure"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            **{k: template["metadata"][k] for k in ("labels", "annotations")},
        },
        "spec": spec,
    }


def probed(port: int, service: str, deadline: float) -> None:
    """A gRPC health Check as the kubelet's grpc probe sends it, until SERVING."""
    while True:
        with (
            LstmClient(f"127.0.0.1:{port}", timeout=2) as client,
            contextlib.suppress(grpc.RpcError),
        ):
            if client.health(service) == "SERVING":
                return
        assert time.monotonic() < deadline, f"{service or 'server'} never SERVING"
        time.sleep(0.5)


@needs_kube_play
def test_the_rendered_deployment_runs_in_podman_kube_play(
    built: dict[str, float], tmp_path: Path
) -> None:
    """The init container exports into the emptyDir, the server runs as the pod spec says,
    answers its probes, Predict and /metrics, and drains within the grace period under load."""
    ports = {"grpc": unused_port(), "metrics": unused_port(), "health": unused_port()}
    name = f"lstm-kube-play-{time.monotonic_ns()}"
    pod = as_played_pod("cpu", name, ports)
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    env = podman_conf(tmp_path)
    played = subprocess.run(
        ["podman", "kube", "play", str(tmp_path / "pod.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    server = f"{name}-lstm-serve"
    try:
        assert played.returncode == 0, played.stderr
        (container,) = pod["spec"]["containers"]  # type: ignore[index]
        deadline = time.monotonic() + 120
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            on = next(
                p["name"]
                for p in container["ports"]
                if p["containerPort"] == container[probe]["grpc"]["port"]
            )
            probed(ports[on], container[probe]["grpc"]["service"], deadline)
        with LstmClient(f"127.0.0.1:{ports['grpc']}") as client:
            answer = client.predict("seed", X)
        assert answer.last_hidden is not None and answer.last_hidden.shape == (2, 32)
        metrics = f"http://127.0.0.1:{ports['metrics']}/metrics"
        with urllib.request.urlopen(metrics, timeout=10) as page:
            assert 'rpc="Predict",version="1"} 1.0' in page.read().decode()
        assert podman("exec", server, "id", "-u") == "10001"

        calls_made: list[tuple[float, float, str]] = []  # (started, ended, code)
        long_input = np.ones((8, 1000, 2), np.float32)  # tens of ms a call: some in flight
        stop_load = threading.Event()

        def load() -> None:
            with LstmClient(f"127.0.0.1:{ports['grpc']}", timeout=10) as client:
                while not stop_load.is_set():
                    started, code = time.monotonic(), "OK"
                    try:
                        client.predict("seed", long_input)
                    except grpc.RpcError as exc:
                        code = exc.code().name
                        time.sleep(0.05)
                    calls_made.append((started, time.monotonic(), code))

        callers = [threading.Thread(target=load) for _ in range(4)]
        for caller in callers:
            caller.start()
        time.sleep(1)
        grace_period = pod["spec"]["terminationGracePeriodSeconds"]  # type: ignore[index]
        began = time.monotonic()
        podman("pod", "stop", "-t", str(grace_period), name)
        stopped_after = time.monotonic() - began
        stop_load.set()
        for caller in callers:
            caller.join(timeout=30)
        assert podman("inspect", server, "--format", "{{.State.ExitCode}}") == "0"
        grace = float(container["args"][container["args"].index("--grace-period") + 1])
        assert stopped_after < grace + 2, stopped_after
        # every call that was sent before the stop was answered: in-flight ones finished in the
        # drain (calls sent after it may meet podman's port forwarder with no server behind)
        before = [code for started, _, code in calls_made if started < began]
        spanning = [1 for started, ended, _ in calls_made if started < began < ended]
        assert before and set(before) == {"OK"} and spanning, (set(before), len(spanning))
    finally:
        podman("pod", "rm", "-f", name, check=False)


TRITONCLIENT_CALL = """
import json, sys
import numpy as np
import tritonclient.grpc as triton
client = triton.InferenceServerClient(sys.argv[1])
x = np.linspace(-1, 1, 2 * 7 * 2, dtype=np.float32).reshape(2, 7, 2)
given = triton.InferInput("input", list(x.shape), "FP32")
given.set_data_from_numpy(x)
result = client.infer(sys.argv[2], [given], outputs=[triton.InferRequestedOutput("last_hidden")])
print(json.dumps({"ready": client.is_model_ready(sys.argv[2]),
                  "last_hidden": result.as_numpy("last_hidden").tolist()}))
"""


def test_the_kserve_runtime_container_answers_tritonclient(volume: str, tmp_path: Path) -> None:
    """The ClusterServingRuntime's container, started with its args, env and security
    context, on the storageUri's contents at /mnt/models, asked by the stock tritonclient (in
    its own process: its protobuf module and ours define the same symbols)."""
    runtime = yaml.safe_load((KUBERNETES / "kserve/clusterservingruntime.yaml").read_text())
    service = yaml.safe_load((KUBERNETES / "kserve/inferenceservice.yaml").read_text())
    (container,) = runtime["spec"]["containers"]
    model = service["metadata"]["name"]
    args = [a.replace("{{.Name}}", model) for a in container["args"]]
    security = container["securityContext"]
    env = [f"--env={e['name']}={e['value']}" for e in container["env"]]
    port, health = unused_port(), unused_port()
    readiness = container["readinessProbe"]["grpc"]
    name = f"lstm-kserve-runtime-{time.monotonic_ns()}"
    podman(
        "run",
        "-d",
        *RUNTIME,
        *LIMITS,
        "--name",
        name,
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--tmpfs",
        "/tmp",
        "--user",
        f"{security['runAsUser']}:{security['runAsGroup']}",
        *env,
        "-v",
        f"{volume}:/mnt/models-volume:ro",
        "-p",
        f"127.0.0.1:{port}:9000",
        "-p",
        f"127.0.0.1:{health}:{readiness['port']}",
        SERVER,
        *relocated_to(args, "/mnt/models", f"/mnt/models-volume/{model}"),
    )
    try:
        probed(health, readiness["service"], time.monotonic() + 60)
        asked = subprocess.run(
            [str(BIN / "python"), "-c", TRITONCLIENT_CALL, f"127.0.0.1:{port}", model],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert asked.returncode == 0, asked.stderr
        answer = json.loads(asked.stdout)
        with LstmClient(f"127.0.0.1:{port}") as client:
            expected = client.predict(model, X).last_hidden
        assert answer["ready"] and expected is not None
        assert np.array_equal(np.array(answer["last_hidden"], np.float32), expected)
    finally:
        podman("rm", "-f", name, check=False)


def relocated_to(args: list[str], path: str, actual: str) -> list[str]:
    """The runtime's args with KServe's model path where this test mounts the model."""
    return [actual if a == path else a for a in args]
