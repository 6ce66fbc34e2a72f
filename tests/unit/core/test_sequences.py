"""The sequence store on its own: order, failures that change nothing, expiry, the record."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lstm_serving.core import sequences
from lstm_serving.core.requests import SequenceStep
from lstm_serving.core.sequences import SequenceStore
from lstm_serving.errors import NotFound, ResourceExhausted

STATE = {"initial_h_0": np.ones((1, 1, 2), np.float32)}


async def test_steps_run_in_arrival_order_one_at_a_time() -> None:
    store = SequenceStore("m", max_sequences=4, idle_timeout=60)
    order: list[int] = []
    running = 0

    async def step(n: int) -> None:
        nonlocal running
        async with store.step(SequenceStep(1, start=n == 0), "", None, 1) as stepping:
            running += 1
            assert running == 1  # never two steps of one sequence at once
            await asyncio.sleep(0)
            order.append(n)
            stepping.final = {"initial_h_0": np.full((1, 1, 2), n, np.float32)}
            running -= 1

    await asyncio.gather(*(step(n) for n in range(6)))
    assert order == list(range(6))


async def test_a_failed_step_changes_nothing_and_a_failed_start_opens_nothing() -> None:
    store = SequenceStore("m", max_sequences=4, idle_timeout=60)
    async with store.step(SequenceStep("a", start=True), "", STATE, 1) as stepping:
        stepping.final = STATE
    with pytest.raises(RuntimeError):
        async with store.step(SequenceStep("a"), "", None, 1) as stepping:
            stepping.final = {}
            raise RuntimeError("the batch failed")
    async with store.step(SequenceStep("a"), "", None, 1) as stepping:
        assert stepping.initial is STATE  # the failed step left the state as it was
        stepping.final = STATE
    with pytest.raises(RuntimeError):
        async with store.step(SequenceStep("b", start=True), "", None, 1):
            raise RuntimeError("deadline passed")
    assert store.open_count == 1
    with pytest.raises(NotFound, match="never started"):  # not "ended": it never opened
        async with store.step(SequenceStep("b"), "", None, 1):
            pass


async def test_a_running_step_is_never_expired_and_idle_ones_are() -> None:
    store = SequenceStore("m", max_sequences=4, idle_timeout=0.05)
    store.start()
    try:
        async with store.step(SequenceStep(1, start=True), "", None, 1) as held:
            await asyncio.sleep(0.3)  # past the timeout, but the step is running
            held.final = STATE
        async with store.step(SequenceStep(1), "", None, 1) as stepping:
            stepping.final = STATE
        await asyncio.sleep(0.3)
        assert store.open_count == 0
        with pytest.raises(NotFound, match="expired after 0 s idle"):
            async with store.step(SequenceStep(1), "", None, 1):
                pass
    finally:
        store.stop()


async def test_the_closed_record_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequences, "CLOSED_RECORD", 3)
    store = SequenceStore("m", max_sequences=10, idle_timeout=60)
    for sid in range(5):
        async with store.step(SequenceStep(sid + 1, start=True, end=True), "", None, 1) as s:
            s.final = STATE
    with pytest.raises(NotFound, match="never started"):  # forgotten: the oldest two
        async with store.step(SequenceStep(1), "", None, 1):
            pass
    with pytest.raises(NotFound, match="was ended"):
        async with store.step(SequenceStep(5), "", None, 1):
            pass


async def test_steps_waiting_on_their_sequence_are_bounded_as_the_queue_is() -> None:
    """300 concurrent steps of one sequence are not all held: past `max_waiting` (the
    server's --max-queue-size) a step is refused RESOURCE_EXHAUSTED, and the held ones run."""
    store = SequenceStore("m", max_sequences=4, idle_timeout=60, max_waiting=3)
    async with store.step(SequenceStep("s", start=True), "", None, 1) as stepping:
        stepping.final = STATE
    release = asyncio.Event()

    async def step() -> str:
        try:
            async with store.step(SequenceStep("s"), "", None, 1) as stepping:
                await release.wait()
                stepping.final = STATE
        except ResourceExhausted as exc:
            return str(exc)
        return "ran"

    tasks = [asyncio.create_task(step()) for _ in range(300)]
    await asyncio.sleep(0.01)  # one runs, three wait, the rest are refused at once
    refused = [t.result() for t in tasks if t.done()]
    assert len(refused) == 296 and "--max-queue-size 3" in refused[0]
    release.set()
    assert [await t for t in tasks].count("ran") == 4


async def test_one_caller_cannot_take_every_sequence() -> None:
    store = SequenceStore("m", max_sequences=10, idle_timeout=60, max_per_owner=2)
    for n in range(2):
        async with store.step(SequenceStep(n, start=True), "token-a", None, 1) as stepping:
            stepping.final = STATE
    with pytest.raises(ResourceExhausted, match="--max-sequences-per-owner"):
        async with store.step(SequenceStep(2, start=True), "token-a", None, 1):
            pass
    async with store.step(SequenceStep(0, start=True), "token-b", None, 1) as stepping:
        stepping.final = STATE  # another token still starts one
    async with store.step(SequenceStep(0, end=True), "token-a", None, 1) as stepping:
        stepping.final = STATE
    async with store.step(SequenceStep(2, start=True), "token-a", None, 1) as stepping:
        stepping.final = STATE  # an ended one gives its place back
    for n in range(2):  # without tokens (owner ""), counted per address
        async with store.step(SequenceStep(n, start=True), "", None, 1, "ipv4:10.0.0.7") as s:
            s.final = STATE
    with pytest.raises(ResourceExhausted, match="--max-sequences-per-owner"):
        async with store.step(SequenceStep(2, start=True), "", None, 1, "ipv4:10.0.0.7"):
            pass
    async with store.step(SequenceStep(2, start=True), "", None, 1, "ipv4:10.0.0.8") as s:
        s.final = STATE  # another address still starts one
    async with store.step(SequenceStep(0, end=True), "", None, 1, "ipv4:10.0.0.8") as s:
        s.final = STATE  # ending from another address gives the starter's place back
    async with store.step(SequenceStep(3, start=True), "", None, 1, "ipv4:10.0.0.7") as s:
        s.final = STATE
    assert store.open_count == 6  # a: 1 and 2, b: 0; 10.0.0.7: 1 and 3; 10.0.0.8: 2
