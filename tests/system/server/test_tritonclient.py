"""The stock KServe v2 client, tritonclient[grpc], against a real lstm-serve process.

The client runs in its own process (tritonclient_driver.py): see that file for why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, export_text_model, free_port, start, stop, wait_serving

DRIVER = Path(__file__).with_name("tritonclient_driver.py")


@pytest.fixture(scope="module")
def report(
    seed_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    repository = tmp_path_factory.mktemp("work") / "models"
    shutil.copytree(seed_repository / "seed", repository / "seed")
    export_text_model(repository)  # what tritonclient sends INT64 and INT32 ids to
    port = free_port()
    server = start(repository, port, "--max-queue-delay-ms", "2")
    try:
        wait_serving(server, port)
        run = subprocess.run(
            [sys.executable, str(DRIVER), f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        assert run.returncode == 0, run.stderr
        yield json.loads(run.stdout)
    finally:
        code, err = stop(server)
        assert code == 0, err


def test_status_and_metadata(report: dict[str, Any]) -> None:
    assert report["live"] and report["ready"]
    assert report["model_ready"] == [True, False]
    assert report["server_name"] == "lstm-serving"
    assert report["metadata"] == {
        "platform": "onnxruntime_onnx",
        "versions": ["1"],
        "inputs": [
            ["input", "FP32", [-1, -1, 2]],
            ["lengths", "INT32", [-1]],
            *(
                [f"initial_{s}_{k}", "FP32", [1, -1, units]]
                for k, units in ((0, 64), (1, 32))
                for s in "hc"
            ),
        ],
        "outputs": ["last_hidden", "sequence", "final_h_0", "final_c_0", "final_h_1", "final_c_1"],
    }


def test_infer_raw_and_typed_each_output_selection(report: dict[str, Any]) -> None:
    assert len(report["infer"]) == 8
    for case, result in report["infer"].items():
        assert result["equal_v1"], case  # bit for bit
        assert result["outputs_sent"] == case.split(" ", 1)[1].split("+"), case
        assert result["id"] == "abc"


def test_errors_carry_the_right_status(report: dict[str, Any]) -> None:
    errors = report["errors"]
    assert errors["unknown model"].startswith("StatusCode.NOT_FOUND")
    assert errors["unknown version"].startswith("StatusCode.NOT_FOUND")
    assert errors["wrong datatype"].startswith("StatusCode.INVALID_ARGUMENT")
    assert "FP64" in errors["wrong datatype"]
    assert errors["unknown output"].startswith("StatusCode.INVALID_ARGUMENT")
    assert errors["model config (Triton only)"].startswith("StatusCode.UNIMPLEMENTED")


def test_stream_of_120_with_one_bad_request(report: dict[str, Any]) -> None:
    stream = report["stream"]
    assert stream["received"] == 120
    assert [i for i, _ in stream["errors"]] == [50]
    assert "this model takes 2" in stream["errors"][0][1]
    assert stream["wrong"] == 0 and stream["ids_in_order"]


def test_mixed_v1_and_v2_under_concurrency_are_exact(report: dict[str, Any]) -> None:
    assert report["mixed"] == {"requests": 200, "wrong": 0}


def test_sequences_with_tritonclient_unary_and_streamed(report: dict[str, Any]) -> None:
    sequences = report["sequences"]
    assert sequences["errors"] == []
    assert sequences["unary_steps"] > 100 and sequences["stream_steps"] > 100
    assert sequences["max_abs_diff"] <= 1e-6


def test_token_ids_from_tritonclient_as_int64_and_int32(report: dict[str, Any]) -> None:
    assert report["tokens"] == {
        "equal_v1": {"INT64": True, "INT32": True},
        "input": ["input", "INT64", [-1, -1]],
    }
