"""Vendors the openAPIV3Schema of KServe's ServingRuntime, ClusterServingRuntime and
InferenceService CRDs (from a KServe checkout's charts/kserve-crd) for the deployment tests.

    python scripts/vendor_kserve_crds.py /path/to/kserve [git commit]

Descriptions are dropped (they are most of the 2 MB) and the JSON is gzipped; everything
that validates is kept as published. The output names the chart version and its commit.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import yaml

CRDS = {
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
}
OUT = Path(__file__).resolve().parents[1] / "tests/system/deploy/kserve/crd_schemas.json.gz"


def without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def main(checkout: Path, commit: str) -> None:
    chart = yaml.safe_load((checkout / "charts/kserve-crd/Chart.yaml").read_text())
    schemas: dict[str, Any] = {
        "source": f"https://github.com/kserve/kserve charts/kserve-crd {chart['version']}, "
        f"commit {commit}; descriptions removed",
    }
    for kind, name in CRDS.items():
        crd = yaml.safe_load((checkout / "charts/kserve-crd/templates" / name).read_text())
        for version in crd["spec"]["versions"]:
            schema = without_descriptions(version["schema"]["openAPIV3Schema"])
            schemas[f"{crd['spec']['group']}/{version['name']}/{kind}"] = schema
    text = json.dumps(schemas, sort_keys=True, separators=(",", ":")) + "\n"
    OUT.write_bytes(gzip.compress(text.encode(), mtime=0))  # 755 KiB of JSON, 30 KiB gzipped
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB): {', '.join(sorted(schemas))}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "unknown")
