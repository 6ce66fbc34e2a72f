"""A time limit on waits that are many and almost always met: a unary call's request arriving
(--request-read-timeout), a stream's next message (--stream-idle-timeout).

An `asyncio.timeout` per wait schedules a timer and cancels it each time: about 5 us per call
and 10 us per stream message on this server's event loop, measured. Here one timer, running
only while something waits, checks every wait a few times per limit; a wait costs a dict entry.
A wait past its limit ends within an eighth of the limit (at most a second) after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")
MAX_CHECK_PERIOD = 1.0  # seconds between checks, at most


class Overdue:
    def __init__(self, limit: float) -> None:
        self.limit = limit  # seconds; 0: no limit
        self._period = min(MAX_CHECK_PERIOD, limit / 8)
        self._due: dict[asyncio.Task[Any], float] = {}  # waiting task -> when it is overdue
        self._expired: set[asyncio.Task[Any]] = set()  # cancelled here, not yet told
        self._timer: asyncio.TimerHandle | None = None

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """What `awaitable` gives, or TimeoutError once it has waited `limit` seconds. The
        caller's task is cancelled to stop the wait, as `asyncio.timeout` does."""
        if not self.limit:
            return await awaitable
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self._due[task] = loop.time() + self.limit
        if self._timer is None:
            self._timer = loop.call_later(self._period, self._check, loop)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if task in self._expired and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            self._due.pop(task, None)
            self._expired.discard(task)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        overdue = [task for task, due in self._due.items() if due <= now]
        for task in overdue:
            del self._due[task]
            self._expired.add(task)
            task.cancel()
        self._timer = loop.call_later(self._period, self._check, loop) if self._due else None
