"""The inline-run policy on its own: measured costs in, the decision out."""

from __future__ import annotations

import pytest

from lstm_serving.core import inline
from lstm_serving.core.inline import InlinePolicy


@pytest.fixture
def no_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inline, "PROBE_INTERVAL_S", 3600.0)


def measured(step_seconds: float = 1e-6, hop_seconds: float = 1e-4) -> InlinePolicy:
    """A policy that has seen one thread run of one step, with no arrivals during it."""
    policy = InlinePolicy()
    policy.ran(1, step_seconds)
    policy.ran_on_thread(hop_seconds, arrivals=False)
    return policy


def test_nothing_runs_inline_before_both_costs_are_measured(no_probe: None) -> None:
    policy = InlinePolicy()
    assert not policy.runs_inline(1, alone=True)
    policy.ran(1, 1e-6)  # the run, but no hop yet
    assert not policy.runs_inline(1, alone=True)


def test_a_cheap_lone_batch_runs_inline_and_a_costly_or_accompanied_one_does_not(
    no_probe: None,
) -> None:
    policy = measured(step_seconds=1e-6, hop_seconds=1e-4)
    assert policy.runs_inline(100, alone=True)  # 100 us of run: the hop's cost
    assert not policy.runs_inline(101, alone=True)  # a step more costs more than the hop
    assert not policy.runs_inline(1, alone=False)  # others queued or running
    assert not InlinePolicy(enabled=False).runs_inline(1, alone=True)


def test_arrivals_during_a_thread_run_send_the_next_lone_batch_there_once(no_probe: None) -> None:
    policy = measured()
    policy.ran_on_thread(1e-4, arrivals=True)
    assert not policy.runs_inline(1, alone=True)  # to the thread, to see if requests come
    assert policy.runs_inline(1, alone=True)  # none did (nothing ran since): inline again


def test_a_probe_goes_to_the_thread_once_the_interval_has_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = measured()
    monkeypatch.setattr(inline, "PROBE_INTERVAL_S", 3600.0)
    assert policy.runs_inline(1, alone=True)
    monkeypatch.setattr(inline, "PROBE_INTERVAL_S", 0.0)
    assert not policy.runs_inline(1, alone=True)


def test_the_step_cost_follows_the_runs_and_the_hop_keeps_its_least(no_probe: None) -> None:
    policy = measured(step_seconds=1e-6, hop_seconds=1e-4)
    policy.ran_on_thread(1.0, arrivals=False)  # a slow hop (a busy loop) does not raise it
    assert policy.runs_inline(100, alone=True)
    for _ in range(50):  # runs grow 10x slower: the average follows
        policy.ran(1, 1e-5)
    assert not policy.runs_inline(100, alone=True)
    assert policy.runs_inline(10, alone=True)
