"""The one-timer time limit on waits: a wait past its limit ends TimeoutError, a wait met gives
its result, and a cancellation from elsewhere stays a cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

from lstm_serving.server.overdue import Overdue


async def test_a_wait_past_its_limit_ends_within_an_eighth_of_it() -> None:
    overdue = Overdue(0.4)
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await overdue.wait(asyncio.sleep(10))
    assert 0.4 <= time.monotonic() - began < 0.4 + 0.05 + 0.2  # period 0.05, and slack


async def test_waits_met_give_their_results_and_leave_no_timer_behind() -> None:
    overdue = Overdue(5.0)
    answers = await asyncio.gather(*(overdue.wait(asyncio.sleep(0.01, i)) for i in range(100)))
    assert answers == list(range(100))
    assert not overdue._due
    await asyncio.sleep(1.1)  # the timer's next check finds nothing waiting and stops
    assert overdue._timer is None


async def test_only_the_overdue_waits_end_and_a_cancel_from_elsewhere_is_kept() -> None:
    overdue = Overdue(0.3)
    slow = asyncio.ensure_future(overdue.wait(asyncio.sleep(10)))
    fast = [asyncio.ensure_future(overdue.wait(asyncio.sleep(0.1, "ok"))) for _ in range(5)]
    cancelled = asyncio.ensure_future(overdue.wait(asyncio.sleep(10)))
    await asyncio.sleep(0.05)
    cancelled.cancel()
    assert [await f for f in fast] == ["ok"] * 5
    with pytest.raises(TimeoutError):
        await slow
    with pytest.raises(asyncio.CancelledError):
        await cancelled


async def test_no_limit_waits_as_long_as_it_takes() -> None:
    assert await Overdue(0).wait(asyncio.sleep(0.2, "done")) == "done"
