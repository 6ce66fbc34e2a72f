"""The HPA's request metric as the cluster computes it: a real Prometheus (Debian's package)
scraping a real lstm-serve at a 1-minute interval, the prometheus-adapter rule's query
evaluated on it while inference calls and metadata polls run. It must return the inference
rate alone, where a 1-minute window would be empty. Takes about two scrape intervals."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from lstm_serving.client.client import LstmClient
from tests.helpers import ROOT, SEED_REPOSITORY, free_port, serving_with_metrics

ADAPTER = ROOT / "deploy/kubernetes/prometheus-adapter/values.yaml"
POD = {"namespace": "serving", "pod": "lstm-serve-7d9f-abcde"}  # as the pods job labels it


def adapter_query(pod: dict[str, str], everything: bool = False) -> str:
    """The adapter rule's metricsQuery, templated as prometheus-adapter does for one pod;
    `everything`: the same over every RPC, for comparison."""
    (rule,) = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    query = str(rule["metricsQuery"])
    if everything:
        query = query.replace(',rpc=~"Predict|PredictStream|ModelInfer|ModelStreamInfer"', "")
    matchers = ",".join(f'{k}="{v}"' for k, v in pod.items())
    return (
        query.replace("<<.Series>>", "lstm_requests_total")
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", "pod")
    )


def instant(prometheus: int, query: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


class Load(threading.Thread):
    """Predict calls and, three times as often, ListModels polls, counted."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.predicts, self.polls = port, 0, 0
        self.running = True

    def run(self) -> None:
        x = np.ones((1, 5, 2), np.float32)
        with LstmClient(f"127.0.0.1:{self.port}") as client:
            while self.running:
                client.predict("seed", x)
                self.predicts += 1
                for _ in range(3):
                    client.list_models()
                    self.polls += 1
                time.sleep(0.02)


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus not installed")
def test_the_adapter_query_returns_the_inference_rate_at_a_one_minute_scrape(
    tmp_path: Path,
) -> None:
    with serving_with_metrics(SEED_REPOSITORY) as (port, metrics):
        web = free_port()
        config = {
            "global": {"scrape_interval": "1m", "evaluation_interval": "1m"},
            "scrape_configs": [
                {
                    "job_name": "kubernetes-pods",
                    "static_configs": [{"targets": [f"127.0.0.1:{metrics}"], "labels": POD}],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{web}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        load = Load(port)
        load.start()
        try:
            result: list[dict[str, Any]] = []
            began = time.monotonic()
            while not result and time.monotonic() - began < 200:  # two scrapes, at most
                time.sleep(5)
                if prometheus.poll() is not None:
                    raise AssertionError(f"prometheus exited: {prometheus.communicate()[1]}")
                try:
                    result = instant(web, adapter_query(POD))
                except OSError:  # not listening yet
                    continue
            assert result, "the adapter's query stayed empty for 200 s at a 1-minute scrape"
            inference = float(result[0]["value"][1])
            (every,) = instant(web, adapter_query(POD, everything=True))
        finally:
            load.running = False
            load.join(timeout=10)
            prometheus.terminate()
            prometheus.wait(timeout=30)
    assert result[0]["metric"] == {"pod": POD["pod"]}
    share = inference / float(every["value"][1])
    expected = load.predicts / (load.predicts + load.polls)  # 0.25: polls are not load
    assert inference > 0 and abs(share - expected) < 0.1, (inference, share, expected)
