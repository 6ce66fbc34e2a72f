"""Vendors the openAPIV3Schema of the CRDs the deployment tests validate against: KServe's
ServingRuntime, ClusterServingRuntime and InferenceService (from a KServe checkout's
charts/kserve-crd), and the Prometheus Operator's PodMonitor (from a prometheus-operator
checkout's example/prometheus-operator-crd).

    python scripts/vendor_crds.py kserve /path/to/kserve [git commit]
    python scripts/vendor_crds.py prometheus-operator /path/to/prometheus-operator [git commit]

Descriptions are dropped (they are most of the size) and the JSON is gzipped; everything
that validates is kept as published. The output names the release and its commit.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import yaml

DEPLOY_TESTS = Path(__file__).resolve().parents[1] / "tests/system/deploy"
SOURCES = {  # name: (repository, folder of the CRDs, their files, the output)
    "kserve": (
        "https://github.com/kserve/kserve",
        "charts/kserve-crd/templates",
        [
            "serving.kserve.io_servingruntimes.yaml",
            "serving.kserve.io_clusterservingruntimes.yaml",
            "serving.kserve.io_inferenceservices.yaml",
        ],
        DEPLOY_TESTS / "kserve/crd_schemas.json.gz",
    ),
    "prometheus-operator": (
        "https://github.com/prometheus-operator/prometheus-operator",
        "example/prometheus-operator-crd",
        ["monitoring.coreos.com_podmonitors.yaml"],
        DEPLOY_TESTS / "prometheus-operator/crd_schemas.json.gz",
    ),
}


def without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def release(source: str, checkout: Path) -> str:
    if source == "kserve":
        return str(
            yaml.safe_load((checkout / "charts/kserve-crd/Chart.yaml").read_text())["version"]
        )
    return (checkout / "VERSION").read_text().strip()


def main(source: str, checkout: Path, commit: str) -> None:
    repository, folder, files, out = SOURCES[source]
    schemas: dict[str, Any] = {
        "source": f"{repository} {folder} {release(source, checkout)}, commit {commit}; "
        "descriptions removed",
    }
    for name in files:
        crd = yaml.safe_load((checkout / folder / name).read_text())
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = without_descriptions(version["schema"]["openAPIV3Schema"])
            schemas[f"{crd['spec']['group']}/{version['name']}/{kind}"] = schema
    text = json.dumps(schemas, sort_keys=True, separators=(",", ":")) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(text.encode(), mtime=0))
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB): {', '.join(sorted(schemas))}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "unknown")
