"""Server-held sequences of one model version: each open sequence's (h, c) between its calls.

A sequence is keyed by (owner, id): a caller's token fingerprint and the id it chose, so one
caller cannot see, step or end another's (NOT_FOUND, as if it did not exist). It counts
against its starter's --max-sequences-per-owner: its token, or without one its address. Steps of one
sequence take its lock in arrival order, so they run one at a time and in order, while steps
of different sequences share batches. What ends a sequence is remembered (a bounded record),
so a late call hears why: never started, ended, expired after N s idle, or evicted.
A step that fails leaves its sequence as it was; a START that fails opens nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from lstm_serving.core.merge import States
from lstm_serving.core.requests import SequenceId, SequenceStep
from lstm_serving.errors import AlreadyExists, NotFound, ResourceExhausted

Key = tuple[str, SequenceId]
CLOSED_RECORD = 10_000  # ids remembered after they close, to say why a late call fails


class SequenceObserver(Protocol):
    """What the store reports (the metrics implement it)."""

    def open_changed(self, count: int) -> None: ...

    def closed(self, reason: str) -> None: ...

    def stepped(self, steps: int) -> None: ...


class Unobserved:
    def open_changed(self, count: int) -> None:
        pass

    def closed(self, reason: str) -> None:
        pass

    def stepped(self, steps: int) -> None:
        pass


@dataclass
class _Open:
    state: States | None  # None: zeros (a START without initial_state, before its first step)
    started: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: str = ""  # why, once closed while a step waited for the lock
    counted_as: str = ""  # whose --max-sequences-per-owner it counts against


def already_open(described: str, started_ago: float) -> AlreadyExists:
    return AlreadyExists(
        f"{described} is open (started {started_ago:.0f} s ago): end it (sequence_end) or "
        "start another id; a START never resets a sequence"
    )


def too_many_open(model: str, count: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"model {model} holds {count} open sequences (the limit, --max-sequences): end some, "
        "or retry later"
    )


def too_many_owned(model: str, count: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"you hold {count} open sequences of model {model} (the limit per caller, a token or "
        "without tokens an address, --max-sequences-per-owner): end some, or retry later"
    )


class WaitingSteps:
    """Steps waiting for an earlier step of their own sequence: held before the batcher's
    queue, so bounded as it is (--max-queue-size), past which a step is refused."""

    def __init__(self, name: str, limit: int) -> None:
        self.name, self.limit, self.count = name, limit, 0

    @contextlib.asynccontextmanager
    async def turn(self, lock: asyncio.Lock) -> AsyncIterator[None]:
        """Holds `lock` (its sequence's) in arrival order, or refuses the step at once."""
        if lock.locked() and self.count >= self.limit:
            raise ResourceExhausted(
                f"{self.count} steps of {self.name}'s sequences already wait for their "
                f"sequence's earlier step (--max-queue-size {self.limit}); send a "
                "sequence's next step after its previous answer, or retry later"
            )
        self.count += 1
        try:
            await lock.acquire()
        finally:
            self.count -= 1
        try:
            yield
        finally:
            lock.release()


class Sequences(Protocol):
    """The sequences of one model version: SequenceStore (in this process) or
    shared_sequences.RedisSequences (--sequence-store)."""

    name: str

    def start(self) -> None: ...

    def stop(self, reason: str = "evicted") -> None: ...

    def step(
        self,
        step: SequenceStep,
        owner: str,
        initial: States | None,
        steps: int,
        counted_as: str = "",
    ) -> contextlib.AbstractAsyncContextManager[Stepping]: ...


class SequenceStore:
    def __init__(
        self,
        name: str,
        max_sequences: int,
        idle_timeout: float,
        observer: SequenceObserver | None = None,
        max_waiting: int = 1024,
        max_per_owner: int = 2500,
    ) -> None:
        self.name = name
        self.max_sequences = max_sequences
        self.idle_timeout = idle_timeout
        self._waiting = WaitingSteps(name, max_waiting)
        self.max_per_owner = max_per_owner  # sequences one caller holds ("": no limit)
        self._owned: Counter[str] = Counter()
        self._observer: SequenceObserver = observer or Unobserved()
        self._open: dict[Key, _Open] = {}
        self._closed: OrderedDict[Key, tuple[str, float]] = OrderedDict()  # reason, when
        self._reaper: asyncio.Task[None] | None = None

    @property
    def open_count(self) -> int:
        return len(self._open)

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    def stop(self, reason: str = "evicted") -> None:
        """Frees every sequence (a model version going away)."""
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for key in list(self._open):
            self._close(key, reason)

    @contextlib.asynccontextmanager
    async def step(
        self,
        step: SequenceStep,
        owner: str,
        initial: States | None,
        steps: int,
        counted_as: str = "",
    ) -> AsyncIterator[Stepping]:
        """Holds the sequence for one step, in arrival order; yields its state to run from.

        The caller sets `stepping.final` to the state the step ended with; the sequence keeps
        it (or is freed, on END). If the body raises, the sequence is left as it was. A START
        counts against `counted_as` (default: the owner; "": no per-caller limit).
        """
        key = (owner, step.id)
        entry = self._begin(key, step, initial, counted_as or owner)
        async with self._waiting.turn(entry.lock):
            if entry.closed:
                raise NotFound(f"{self._describe(step)} {entry.closed}")
            stepping = Stepping(entry.state)
            try:
                yield stepping
            except BaseException:
                if step.start and self._open.get(key) is entry:
                    self._close(key, "closed: its START failed", record=False)
                raise
            entry.state, entry.last_used = stepping.final, time.monotonic()
            self._observer.stepped(steps)
            if step.end:
                self._close(key, "ended")

    def _begin(
        self, key: Key, step: SequenceStep, initial: States | None, counted_as: str
    ) -> _Open:
        entry = self._open.get(key)
        if step.start:
            if entry is not None:
                raise already_open(self._describe(step), time.monotonic() - entry.started)
            if len(self._open) >= self.max_sequences:
                raise too_many_open(self.name, len(self._open))
            if counted_as and self._owned[counted_as] >= self.max_per_owner:
                raise too_many_owned(self.name, self._owned[counted_as])
            self._owned[counted_as] += 1
            entry = self._open[key] = _Open(initial, counted_as=counted_as)
            self._closed.pop(key, None)
            self._observer.open_changed(len(self._open))
            return entry
        if entry is None:
            raise NotFound(f"{self._describe(step)} {self._why_not_open(key)}")
        entry.last_used = time.monotonic()
        return entry

    def _why_not_open(self, key: Key) -> str:
        if key not in self._closed:
            return "was never started (send sequence_start on its first call)"
        reason, when = self._closed[key]
        ago = time.monotonic() - when
        return f"{reason}, {ago:.0f} s ago: start it again (sequence_start)"

    def _describe(self, step: SequenceStep) -> str:
        return f"{step.describe()} of model {self.name}"

    def _close(self, key: Key, reason: str, record: bool = True) -> None:
        entry = self._open.pop(key)
        entry.closed = f"was {reason}"
        self._owned[entry.counted_as] -= 1
        if not self._owned[entry.counted_as]:
            del self._owned[entry.counted_as]
        if record:
            self._closed[key] = (entry.closed, time.monotonic())
            while len(self._closed) > CLOSED_RECORD:
                self._closed.popitem(last=False)
            self._observer.closed(reason.split(" ")[0])
        self._observer.open_changed(len(self._open))

    async def _reap(self) -> None:
        """Frees sequences idle past the timeout (none whose step is running or waiting)."""
        while True:
            await asyncio.sleep(max(0.05, min(1.0, self.idle_timeout / 4)))
            now = time.monotonic()
            for key, entry in list(self._open.items()):
                idle = now - entry.last_used
                if idle > self.idle_timeout and not entry.lock.locked():
                    self._close(
                        key,
                        f"expired after {idle:.0f} s idle (--sequence-idle-timeout "
                        f"{self.idle_timeout:g})",
                    )


@dataclass
class Stepping:
    initial: States | None  # what the step runs from (None: zeros)
    final: States | None = None  # what it ended with, set by the caller
