"""Settings: defaults, flags, LSTM_SERVE_* variables and their precedence, bad values."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from lstm_serving.core.settings import Settings, parse_settings
from tests.helpers import ROOT


def test_defaults() -> None:
    s = parse_settings([], {})
    assert s == Settings()
    assert (s.repository, s.port, s.metrics_port, s.device) == (Path("models"), 50051, 8002, "auto")


def test_flags_env_and_precedence() -> None:
    env = {"LSTM_SERVE_MAX_BATCH_SIZE": "16", "LSTM_SERVE_DEVICE": "cpu", "LSTM_SERVE_PORT": "7"}
    s = parse_settings(["--port", "9000", "--max-queue-delay-ms", "2.5", "--repository", "/m"], env)
    assert s.max_batch_size == 16 and s.device == "cpu"  # from the environment
    assert s.port == 9000  # the flag wins over LSTM_SERVE_PORT
    assert s.max_queue_delay_ms == 2.5 and s.repository == Path("/m")


def test_threads_per_worker() -> None:
    assert Settings(workers=2).threads_per_worker(cpu_count=8) == 4
    assert Settings(workers=4).threads_per_worker(cpu_count=2) == 1
    assert Settings(intra_op_threads=3, workers=2).threads_per_worker(cpu_count=8) == 3


def test_answer_budgets_follow_the_memory_the_container_may_use() -> None:
    mib = 1 << 20
    # a 1 GiB pod: an eighth, shared by the workers; a connection: half (at least one largest
    # answer, counted four times over)
    assert Settings().answer_budgets(memory=1024 * mib) == (128 * mib, 64 * mib)
    assert Settings(workers=4).answer_budgets(memory=1024 * mib) == (64 * mib, 64 * mib)
    assert Settings().answer_budgets(memory=16384 * mib) == (2048 * mib, 1024 * mib)
    assert Settings(max_message_bytes=4 * mib).answer_budgets(memory=1024 * mib)[1] == 64 * mib
    assert Settings(answer_budget=200 * mib).answer_budgets(memory=1) == (200 * mib, 100 * mib)
    assert Settings(answer_budget_per_connection=80 * mib).answer_budgets(memory=1024 * mib) == (
        128 * mib,
        80 * mib,
    )


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--workers", "0"], {}, "--workers must be >= 1"),
        (["--device", "tpu"], {}, "invalid choice"),
        ([], {"LSTM_SERVE_DEVICE": "tpu"}, "LSTM_SERVE_DEVICE must be one of cpu, cuda, auto"),
        ([], {"LSTM_SERVE_PORT": "x"}, "LSTM_SERVE_PORT='x' is not a valid int"),
        (["--max-queue-delay-ms", "-1"], {}, "must be >= 0"),
        (["--answer-budget-per-connection", "1000"], {}, "must be >= --max-message-bytes"),
    ],
)
def test_bad_values_exit_2_with_message(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_settings(argv, env)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_configuration_page_is_generated_from_settings(tmp_path: Path) -> None:
    """docs/configuration.md is where users look: it is what Settings says today."""
    fresh = tmp_path / "configuration.md"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/gen_config_docs.py"), str(fresh)], check=True
    )
    page = (ROOT / "docs/configuration.md").read_text()
    assert page == fresh.read_text(), "docs/configuration.md is stale: run `make docs`, commit"
    flags = set(re.findall(r"`--([a-z-]+)[ `]", page))
    missing = [f.name for f in fields(Settings) if f.name.replace("_", "-") not in flags]
    assert not missing, missing
