"""The Kubernetes and KServe files, checked by real tools without a cluster.

Every kustomize overlay rendered by `kubectl kustomize` and each object validated by
kubernetes-validate against the oldest and newest Kubernetes schemas we support (strict: an
unknown field fails); images, replicas and Pod Security "restricted" read from the rendered
specs; the KServe objects and the PodMonitor against their published CRD schemas (vendored by
scripts/vendor_crds.py, source in the file); then lstm-serve started exactly as the
Deployment and the KServe runtime say, probed as the kubelet would.
Over 250 lines: the rendering, both validations and both starts share their helpers here.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import yaml

from lstm_serving.client.client import LstmClient
from lstm_serving.core.metrics import INFERENCE_RPCS
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from lstm_serving.protocols.kserve_v2 import build_infer_request
from lstm_serving.version import __version__
from tests.helpers import BIN, ROOT, free_port, kustomize, stop

KUBERNETES = ROOT / "deploy/kubernetes"
# The Kubernetes versions supported (docs/deployment.md): preStop `sleep` is on by default from
# 1.30 (1.29's schema has it, behind an alpha feature gate, so only the docs can say so); the
# newest is kubernetes-validate's newest copy of the schemas.
KUBERNETES_VERSIONS = ("1.30", "1.37")
KUBERNETES_VERSION = KUBERNETES_VERSIONS[-1]
OVERLAYS = ("cpu", "gpu")
KSERVE_SCHEMAS = json.loads(
    gzip.decompress((Path(__file__).parent / "kserve/crd_schemas.json.gz").read_bytes())
)
MONITORING_SCHEMAS = json.loads(
    gzip.decompress(
        (Path(__file__).parent / "prometheus-operator/crd_schemas.json.gz").read_bytes()
    )
)
needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed (it renders kustomize)"
)


def render(overlay: str) -> list[dict[str, Any]]:
    return kustomize(KUBERNETES / "overlays" / overlay)


def by_kind(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        kinds.setdefault(obj["kind"], []).append(obj)
    return kinds


def server_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(objects)["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_kubernetes(overlay: str) -> None:
    objects = render(overlay)
    assert set(by_kind(objects)) == {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    }
    for version in KUBERNETES_VERSIONS:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)


@needs_kubectl
def test_the_validation_rejects_an_unknown_field() -> None:
    deployment = by_kind(render("cpu"))["Deployment"][0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_deployment_is_locked_down_probed_and_drains_in_time(overlay: str) -> None:
    objects = render(overlay)
    kinds = by_kind(objects)
    pod = kinds["Deployment"][0]["spec"]["template"]
    container = server_container(objects)
    args = container["args"]
    metrics_port = int(flag(args, "--metrics-port"))
    health_port = int(flag(args, "--health-port"))  # the probes' own port: load cannot starve it
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == health_port
    assert {"name": "health", "containerPort": health_port, "protocol": "TCP"} in container["ports"]
    assert container["readinessProbe"]["grpc"]["service"] == "lstm.v1.LstmService"
    for each in (*pod["spec"]["initContainers"], container):
        security = each["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
        assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"]
    drain = container["lifecycle"]["preStop"]["sleep"]["seconds"] + float(
        flag(args, "--grace-period")
    )
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    assert container["resources"]["limits"]["cpu"] == next(
        e["value"] for e in container["env"] if e["name"] == "LSTM_SERVE_INTRA_OP_THREADS"
    )
    services = {s["metadata"]["name"]: s["spec"] for s in kinds["Service"]}
    assert services["lstm-serve-headless"]["clusterIP"] == "None"
    selector = kinds["Deployment"][0]["spec"]["selector"]["matchLabels"]
    assert all(spec["selector"] == selector for spec in services.values())
    assert pod["metadata"]["labels"].items() >= selector.items()
    if overlay == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert flag(args, "--device") == "cuda" and "/server-gpu:" in container["image"]


@needs_kubectl
def test_metrics_stay_internal_and_autoscaling_finds_its_metric() -> None:
    kinds = by_kind(render("cpu"))
    (policy,) = kinds["NetworkPolicy"]
    rules = {tuple(p["port"] for p in rule["ports"]): rule for rule in policy["spec"]["ingress"]}
    assert "from" not in rules[("grpc",)]  # gRPC from anywhere
    assert rules[("metrics",)]["from"]  # /metrics only from Prometheus's namespace
    (hpa,) = kinds["HorizontalPodAutoscaler"]
    pods_metric = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
    adapter = yaml.safe_load((KUBERNETES / "prometheus-adapter/values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == pods_metric["pods"]["metric"]["name"]
    assert re.match(r"lstm_requests_total\{", rule["seriesQuery"])  # what the server exports
    inference = f'rpc=~"{"|".join(INFERENCE_RPCS)}"'  # load only, at zero from start-up
    assert inference in rule["seriesQuery"] and inference in rule["metricsQuery"]
    assert "[2m]" in rule["metricsQuery"]  # two samples at a 1-minute scrape interval
    assert adapter["prometheus"]["url"] == "http://prometheus-server.monitoring.svc"
    operator = yaml.safe_load(
        (KUBERNETES / "prometheus-adapter/kube-prometheus-stack.yaml").read_text()
    )
    assert operator["prometheus"] == {
        "url": "http://kube-prometheus-stack-prometheus.monitoring.svc",
        "port": 9090,
    }


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_come_from_the_overlays_images_block_with_immutable_tags(overlay: str) -> None:
    block = yaml.safe_load((KUBERNETES / "overlays" / overlay / "kustomization.yaml").read_text())
    named = {f"{i['newName']}:{i['newTag']}" for i in block["images"]}
    pod = by_kind(render(overlay))["Deployment"][0]["spec"]["template"]["spec"]
    containers = [*pod["initContainers"], *pod["containers"]]
    assert {c["image"] for c in containers} == named
    for container in containers:
        assert container["image"].endswith(f":{__version__}")  # the tag `make images` builds
        assert container["imagePullPolicy"] == "IfNotPresent"
    (runtime,) = kserve_objects()["clusterservingruntime"]["spec"]["containers"]
    assert runtime["image"] == f"lstm-serving/server:{__version__}"
    assert runtime["imagePullPolicy"] == "IfNotPresent"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaled_deployment_sets_no_replicas(overlay: str) -> None:
    """An apply would otherwise reset a scaled-out Deployment to the file's count."""
    kinds = by_kind(render(overlay))
    (hpa,) = kinds["HorizontalPodAutoscaler"]
    (deployment,) = kinds["Deployment"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"]


def with_component(tmp_path: Path, component: str) -> dict[str, list[dict[str, Any]]]:
    """The cpu overlay with one of deploy/kubernetes/components added, rendered, by kind."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base, added = KUBERNETES / "overlays/cpu", KUBERNETES / "components" / component
    (overlay / "kustomization.yaml").write_text(  # kustomize takes relative paths only
        f"resources: [{os.path.relpath(base, overlay)}]\n"
        f"components: [{os.path.relpath(added, overlay)}]\n"
    )
    return by_kind(kustomize(overlay, "--load-restrictor", "LoadRestrictionsNone"))


@needs_kubectl
def test_the_podmonitor_component_is_valid_and_selects_the_pods(tmp_path: Path) -> None:
    kinds = with_component(tmp_path, "podmonitor")
    (monitor,) = kinds["PodMonitor"]
    crd_validate(MONITORING_SCHEMAS, monitor)
    broken = copy.deepcopy(monitor)
    broken["spec"]["podMetricsEndpoints"][0]["scrapeInterval"] = "30s"  # the field is interval
    with pytest.raises(jsonschema.ValidationError):
        crd_validate(MONITORING_SCHEMAS, broken)
    pod = kinds["Deployment"][0]["spec"]["template"]
    assert pod["metadata"]["labels"].items() >= monitor["spec"]["selector"]["matchLabels"].items()
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports


# Pod Security Standards, "restricted" profile (kubernetes.io/docs/concepts/security/
# pod-security-standards): the rules that apply to what a pod spec and its containers set.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What in a pod spec (or a KServe runtime's spec) the restricted profile forbids."""
    found = []
    pod_security = pod.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(field)
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds)}")
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        security = container.get("securityContext", {})
        name = container["name"]
        merged = {**pod_security, **security}
        if security.get("privileged"):
            found.append(f"{name}: privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        if merged.get("runAsNonRoot") is not True or merged.get("runAsUser") == 0:
            found.append(f"{name}: may run as root")
        if merged.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: no seccompProfile RuntimeDefault")
        capabilities = security.get("capabilities", {})
        if capabilities.get("drop") != ["ALL"]:
            found.append(f"{name}: capabilities not dropped")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities added")
        if any(p.get("hostPort") for p in container.get("ports", [])):
            found.append(f"{name}: hostPort")
    return found


@needs_kubectl
def test_the_pods_pass_pod_security_restricted() -> None:
    pod = by_kind(render("cpu"))["Deployment"][0]["spec"]["template"]["spec"]
    runtime = kserve_objects()["clusterservingruntime"]["spec"]
    assert restricted_violations(pod) == []
    assert restricted_violations(runtime) == []
    (container,) = runtime["containers"]
    assert container["securityContext"]["runAsGroup"] == container["securityContext"]["runAsUser"]
    loose = copy.deepcopy(runtime)
    del loose["containers"][0]["securityContext"]["seccompProfile"]
    assert restricted_violations(loose) == ["kserve-container: no seccompProfile RuntimeDefault"]


def strict(schema: Any) -> Any:
    """As the API server treats a structural schema: fields it does not know are errors."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_validate(schemas: dict[str, Any], obj: dict[str, Any]) -> None:
    schema = schemas[f"{obj['apiVersion']}/{obj['kind']}"]
    jsonschema.Draft7Validator(strict(schema)).validate(obj)


def kserve_validate(obj: dict[str, Any]) -> None:
    crd_validate(KSERVE_SCHEMAS, obj)


def kserve_objects() -> dict[str, dict[str, Any]]:
    return {
        path.stem: yaml.safe_load(path.read_text())
        for path in sorted((KUBERNETES / "kserve").glob("*.yaml"))
    }


def test_kserve_objects_match_kserves_crd_schemas() -> None:
    objects = kserve_objects()
    policy = objects.pop("networkpolicy")
    assert {o["kind"] for o in objects.values()} == {"ClusterServingRuntime", "InferenceService"}
    for obj in objects.values():
        kserve_validate(obj)
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(policy, version, strict=True)
    broken = copy.deepcopy(objects["clusterservingruntime"])
    broken["spec"]["protocolVersion"] = ["grpc-v2"]  # the field is protocolVersions
    with pytest.raises(jsonschema.ValidationError):
        kserve_validate(broken)
    runtime, service = objects["clusterservingruntime"], objects["inferenceservice"]
    assert runtime["spec"]["protocolVersions"] == ["grpc-v2"]
    (container,) = runtime["spec"]["containers"]
    assert container["ports"][0]["name"] == "h2c"  # KServe's sign of a gRPC port
    assert str(container["ports"][0]["containerPort"]) == flag(container["args"], "--port")
    container_metrics = flag(container["args"], "--metrics-port")
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected == {"serving.kserve.io/inferenceservice": service["metadata"]["name"]}
    open_ports, monitoring = policy["spec"]["ingress"]
    assert monitoring["ports"] == [{"port": int(container_metrics), "protocol": "TCP"}]
    assert monitoring["from"]  # /metrics only from Prometheus's namespace
    for allowed in open_ports["ports"]:  # every other port, from anywhere
        assert not allowed["port"] <= int(container_metrics) <= allowed["endPort"]
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in [
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    ]


def server_entrypoint() -> list[str]:
    """The server image's ENTRYPOINT (a container without `command` runs it)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    server_stage = dockerfile.split("AS server\n", 1)[1].split("\nFROM ", 1)[0]
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", server_stage, re.MULTILINE)
    assert entrypoint is not None
    return list(json.loads(entrypoint.group(1)))


def relocated(args: list[str], paths: dict[str, str], ports: dict[str, int]) -> list[str]:
    """The manifest's args with its volume paths and ports mapped to this machine's."""
    mapped = [paths.get(a, a) for a in args]
    for name, port in ports.items():
        mapped[mapped.index(name) + 1] = str(port)
    return mapped


def probe(port: int, service: str) -> str:
    """A gRPC health Check, as the kubelet's grpc probe sends it."""
    with LstmClient(f"127.0.0.1:{port}", timeout=5) as client:
        return client.health(service)


def started_as(
    container: dict[str, Any], args: list[str], probe_port: int
) -> subprocess.Popen[str]:
    """lstm-serve with the container's entrypoint, args and env, once its startup probe's
    check answers SERVING (as the kubelet would wait)."""
    entrypoint = server_entrypoint()
    env = {"PATH": str(BIN)} | {e["name"]: e["value"] for e in container.get("env", [])}
    process = subprocess.Popen(
        [str(BIN / entrypoint[0]), *entrypoint[1:], *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    startup = container.get("startupProbe", {}).get("grpc", {"service": ""})
    for _ in range(150):
        if process.poll() is not None:
            raise AssertionError(f"lstm-serve exited: {process.communicate()[1]}")
        try:
            if probe(probe_port, startup["service"]) == "SERVING":
                return process
        except grpc.RpcError:
            pass
        subprocess.run(["sleep", "0.2"], check=True)
    stop(process)
    raise AssertionError("never SERVING")


@needs_kubectl
def test_the_server_starts_as_the_deployment_says_and_answers_its_probes(tmp_path: Path) -> None:
    """The init container's export into the models volume, then the server on it."""
    objects = render("cpu")
    pod = by_kind(objects)["Deployment"][0]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    models = tmp_path / "models"
    export = subprocess.run(
        [str(BIN / "lstm-export"), *relocated(init["args"], {"/models": str(models)}, {})],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert export.returncode == 0, export.stderr
    container = server_container(objects)
    port, metrics, health = free_port(), free_port(), free_port()
    args = relocated(
        container["args"],
        {"/models": str(models)},
        {"--port": port, "--metrics-port": metrics, "--health-port": health},
    )
    process = started_as(container, args, health)
    try:
        for name in ("readinessProbe", "livenessProbe"):
            assert probe(health, container[name]["grpc"]["service"]) == "SERVING"
        with LstmClient(f"127.0.0.1:{port}", timeout=5) as client:
            assert client.predict("seed", np.ones((1, 3, 2), np.float32)).last_hidden is not None
    finally:
        code, err = stop(process)
    assert code == 0, err
    assert "threads" in err and "2 threads" in err  # LSTM_SERVE_INTRA_OP_THREADS from env


def test_the_server_starts_as_the_kserve_runtime_says(
    tmp_path: Path, seed_repository: Path
) -> None:
    """KServe's storage initializer leaves the storageUri's contents at /mnt/models; the
    runtime's {{.Name}} is the InferenceService's name."""
    objects = kserve_objects()
    (container,) = objects["clusterservingruntime"]["spec"]["containers"]
    name = objects["inferenceservice"]["metadata"]["name"]
    mounted = tmp_path / "mnt-models"
    (mounted / "1").mkdir(parents=True)
    shutil.copy(seed_repository / "seed/1/model.onnx", mounted / "1/model.onnx")
    port, metrics, health = free_port(), free_port(), free_port()
    args = relocated(
        [a.replace("{{.Name}}", name) for a in container["args"]],
        {"/mnt/models": str(mounted)},
        {"--port": port, "--metrics-port": metrics, "--health-port": health},
    )
    process = started_as(container, args, health)
    try:
        readiness = container["readinessProbe"]["grpc"]
        assert readiness["port"] == int(flag(container["args"], "--health-port"))
        assert probe(health, readiness["service"]) == "SERVING"
        request = build_infer_request(name, np.ones((1, 3, 2), np.float32))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        assert answer.model_name == name and answer.model_version == "1"
    finally:
        code, err = stop(process)
    assert code == 0, err


@needs_kubectl
def test_the_redis_sequences_component_is_valid_and_wired(tmp_path: Path) -> None:
    """The optional shared sequence store: valid objects, Pod Security "restricted", every
    lstm-serve pod pointed at its Service, and only lstm-serve pods let in."""
    kinds = with_component(tmp_path, "redis-sequences")
    for version in KUBERNETES_VERSIONS:
        for objects in kinds.values():
            for obj in objects:
                kubernetes_validate.validate(obj, version, strict=True)
    deployments = {d["metadata"]["name"]: d for d in kinds["Deployment"]}
    redis, server = deployments["lstm-sequences"], deployments["lstm-serve"]
    assert restricted_violations(redis["spec"]["template"]["spec"]) == []
    env = {
        e["name"]: e["value"] for e in server["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    services = {s["metadata"]["name"]: s for s in kinds["Service"]}
    port = services["lstm-sequences"]["spec"]["ports"][0]["port"]
    assert env["LSTM_SERVE_SEQUENCE_STORE"] == f"redis://lstm-sequences:{port}/0"
    assert services["lstm-sequences"]["spec"]["selector"].items() <= (
        redis["spec"]["template"]["metadata"]["labels"].items()
    )
    policy = next(p for p in kinds["NetworkPolicy"] if p["metadata"]["name"] == "lstm-sequences")
    (rule,) = policy["spec"]["ingress"]
    allowed = rule["from"][0]["podSelector"]["matchLabels"]
    assert allowed.items() <= server["spec"]["template"]["metadata"]["labels"].items()
