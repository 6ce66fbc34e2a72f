"""Server-held sequences kept in Redis (--sequence-store redis://...), so any replica serves
any step of any sequence: a replica that dies or drains loses none, and no sticky routing is
needed.

Per sequence, one hash holds its state, a version counter, when it started and its step
count; its TTL is the idle timeout, so expiry needs no reaper. A step reads the hash, runs in
its batch as in process, and writes back with a script that checks the version it read: a
step of the same sequence that got there first (on another replica) makes this one ABORTED,
never a lost update. Steps of one sequence on one replica still queue in arrival order on a
local lock, as `sequences.SequenceStore` does. Why a sequence closed is kept for an hour;
open sequences are counted in sorted sets (per model version, and per caller: a token, or
without one an address, kept in the sequence's hash) scored by their last use, so
--max-sequences and --max-sequences-per-owner hold across replicas.

Redis is a cache of recurrent state here: if it restarts without persistence, open
sequences are gone (their next steps get NOT_FOUND), as when a replica restarts without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from lstm_serving.core.merge import States
from lstm_serving.core.requests import SequenceId, SequenceStep
from lstm_serving.core.sequences import (
    SequenceObserver,
    Stepping,
    Unobserved,
    WaitingSteps,
    already_open,
    too_many_open,
    too_many_owned,
)
from lstm_serving.errors import Aborted, AlreadyExists, NotFound, Unavailable

log = logging.getLogger(__name__)

CLOSED_FOR_S = 3600  # how long why a sequence closed is remembered
PREFIX = "lstm-serving"

# KEYS: state, open set, caller's open set, closed record. ARGV: now, idle (s), max open, max
# per caller (0: no caller limit). Opens the sequence's place, or says why not.
OPEN = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'exists', redis.call('HGET', KEYS[1], 'started')}
end
local now, idle = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - idle)
local open = redis.call('ZCARD', KEYS[2])
if open >= tonumber(ARGV[3]) then return {'full', tostring(open)} end
if tonumber(ARGV[4]) > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - idle)
  local owned = redis.call('ZCARD', KEYS[3])
  if owned >= tonumber(ARGV[4]) then return {'owner', tostring(owned)} end
end
return {'ok', ''}
"""

# KEYS: state, open set, caller's open set, closed record. ARGV: version read ('' for a
# START), new state, now, idle (ms), end ('1' or ''), member, the caller it counts against
# ('': none), how long the closed record is kept (s).
WRITE = """
local current = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] == '' then
  if current then return 'exists' end
elseif not current then
  return 'gone'
elseif current ~= ARGV[1] then
  return 'conflict'
end
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[6])
  redis.call('ZREM', KEYS[3], ARGV[6])
  redis.call('SET', KEYS[4], 'ended ' .. ARGV[3], 'EX', ARGV[8])
  return 'ok'
end
local started = redis.call('HGET', KEYS[1], 'started') or ARGV[3]
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'version', (tonumber(current) or 0) + 1,
           'started', started, 'counted', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[6])
if ARGV[7] ~= '' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[6]) end
redis.call('DEL', KEYS[4])
return 'ok'
"""


def encode_states(states: States | None) -> bytes:
    """States as bytes: a JSON header of names and shapes, then their float32 data."""
    if states is None:
        return b""
    names = sorted(states)
    header = json.dumps([[n, list(states[n].shape)] for n in names]).encode()
    data = b"".join(np.ascontiguousarray(states[n], np.float32).tobytes() for n in names)
    return len(header).to_bytes(4, "big") + header + data


def decode_states(blob: bytes) -> States | None:
    if not blob:
        return None
    size = int.from_bytes(blob[:4], "big")
    states, offset = {}, 4 + size
    for name, shape in json.loads(blob[4 : 4 + size]):
        count = int(np.prod(shape))
        states[name] = np.frombuffer(blob, np.float32, count, offset).reshape(shape).copy()
        offset += 4 * count
    return states


Queue = Callable[[Any], int]  # adds a call's commands to a pipeline, returns how many


class Coalesced:
    """Redis commands issued in one turn of the event loop, sent as one pipeline: the steps of
    a batch resume together when it is answered, so a batch's writes cost one round trip, not
    one per step (and so do the reads of steps that arrive together)."""

    def __init__(self, client: Any, url: str) -> None:
        self.client, self.url = client, url  # redis.asyncio.Redis
        # hears each round trip's seconds and whether it succeeded (the metrics set it)
        self.observe: Callable[[float, bool], None] = lambda seconds, ok: None
        self._pending: list[tuple[Queue, asyncio.Future[list[Any]]]] = []
        self._flushes: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references

    async def run(self, queue: Queue) -> list[Any]:
        """The results of the commands `queue` adds, once their pipeline has run; a failure
        of the store is UNAVAILABLE, naming it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._pending.append((queue, future))
        if len(self._pending) == 1:
            loop.call_soon(self._start_flush)
        return await future

    def _start_flush(self) -> None:
        task = asyncio.get_running_loop().create_task(self._flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self) -> None:
        pending, self._pending = self._pending, []
        pipe = self.client.pipeline(transaction=False)
        counts = [queue(pipe) for queue, _ in pending]
        began = time.perf_counter()
        try:
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # redis-py raises its ConnectionError, TimeoutError, ...
            self.observe(time.perf_counter() - began, False)
            refusal = Unavailable(
                f"the sequence store {self.url} cannot be reached ({exc}): sequence "
                "steps wait for it; calls without a sequence are served"
            )
            for _, future in pending:
                if not future.done():
                    future.set_exception(refusal)
            return
        self.observe(time.perf_counter() - began, True)
        start = 0
        for (_, future), count in zip(pending, counts, strict=True):
            answers = results[start : start + count]
            start += count
            failed = next((a for a in answers if isinstance(a, Exception)), None)
            if future.done():
                continue
            if failed is not None:  # a command Redis refused: a fault of ours, not the store's
                future.set_exception(failed)
            else:
                future.set_result(answers)


class RedisSequences:
    """The sequences of one model version, in Redis: the interface of SequenceStore."""

    def __init__(
        self,
        store: Coalesced,
        name: str,
        max_sequences: int,
        idle_timeout: float,
        observer: SequenceObserver | None = None,
        max_waiting: int = 1024,
        max_per_owner: int = 2500,
    ) -> None:
        self._store = store
        self.name = name
        self.max_sequences = max_sequences
        self.idle_timeout = idle_timeout
        self.max_per_owner = max_per_owner
        self._observer: SequenceObserver = observer or Unobserved()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # key -> lock, steps holding it
        self._waiting = WaitingSteps(name, max_waiting)

    def start(self) -> None:
        """Expiry is Redis's (each sequence's TTL): nothing to run."""

    def stop(self, reason: str = "evicted") -> None:
        """A version going away here may still be served by other replicas: its sequences stay."""

    def _keys(self, owner: str, sequence: SequenceId, counted_as: str) -> tuple[list[str], str]:
        member = f"{owner or '-'}:{type(sequence).__name__}:{sequence}"
        base = f"{PREFIX}:{self.name}"
        keys = [
            f"{base}:seq:{member}",
            f"{base}:open",
            f"{base}:open:{counted_as or '-'}",
            f"{base}:closed:{member}",
        ]
        return keys, member

    @contextlib.asynccontextmanager
    async def _local_turn(self, key: str) -> AsyncIterator[None]:
        """Steps of one sequence on this replica, one at a time in arrival order."""
        lock, holders = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, holders + 1)
        try:
            async with self._waiting.turn(lock):
                yield
        finally:
            lock, holders = self._locks[key]
            if holders == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, holders - 1)

    @contextlib.asynccontextmanager
    async def step(
        self,
        step: SequenceStep,
        owner: str,
        initial: States | None,
        steps: int,
        counted_as: str = "",
    ) -> AsyncIterator[Stepping]:
        """As SequenceStore.step, the state read from and written back to Redis."""
        counted_as = counted_as or owner
        keys, member = self._keys(owner, step.id, counted_as)
        async with self._local_turn(keys[0]):
            now = time.time()
            if step.start:
                await self._open(keys, step, counted_as, now)
                version, state = "", initial
            else:  # counted against its starter, whoever steps it now
                version, state, counted_as = await self._read(keys, member, step)
                keys, _ = self._keys(owner, step.id, counted_as)
            stepping = Stepping(state)
            yield stepping
            args = [
                version,
                encode_states(stepping.final),
                time.time(),
                int(self.idle_timeout * 1000),
                "1" if step.end else "",
                member,
                counted_as,
                CLOSED_FOR_S,
            ]
            (written,) = await self._store.run(lambda pipe: _eval(pipe, WRITE, keys, args))
            self._settle(written.decode() if isinstance(written, bytes) else written, step)
            self._observer.stepped(steps)

    async def _open(self, keys: list[str], step: SequenceStep, counted_as: str, now: float) -> None:
        limit = self.max_per_owner if counted_as else 0
        args = [now, self.idle_timeout, self.max_sequences, limit]
        ((verdict, detail),) = await self._store.run(lambda pipe: _eval(pipe, OPEN, keys, args))
        verdict = verdict.decode() if isinstance(verdict, bytes) else verdict
        detail = detail.decode() if isinstance(detail, bytes) else detail
        if verdict == "exists":
            raise already_open(self._describe(step), now - float(detail or now))
        if verdict == "full":
            raise too_many_open(self.name, int(detail))
        if verdict == "owner":
            raise too_many_owned(self.name, int(detail))

    async def _read(
        self, keys: list[str], member: str, step: SequenceStep
    ) -> tuple[str, States | None, str]:
        """The sequence's version, state, and whom it counts against."""

        def queue(pipe: Any) -> int:
            pipe.hmget(keys[0], "version", "state", "counted")
            pipe.get(keys[3])
            pipe.zscore(keys[1], member)
            return 3

        (version, blob, counted), closed, last_used = await self._store.run(queue)
        if version is None:
            raise NotFound(f"{self._describe(step)} {self._why_not_open(closed, last_used)}")
        return version.decode(), decode_states(blob or b""), (counted or b"").decode()

    def _why_not_open(self, closed: bytes | None, last_used: float | None) -> str:
        if closed is not None:
            reason, when = closed.decode().rsplit(" ", 1)
            return f"was {reason}, {time.time() - float(when):.0f} s ago: start it again"
        if last_used is not None:
            return (
                f"expired after {self.idle_timeout:g} s idle (--sequence-idle-timeout), "
                f"{time.time() - last_used - self.idle_timeout:.0f} s ago: start it again"
            )
        return "was never started (send sequence_start on its first call)"

    def _settle(self, written: str, step: SequenceStep) -> None:
        """What the write found: the step's answer stands, or it is refused."""
        if written == "ok":
            return
        if written == "exists":
            raise AlreadyExists(
                f"{self._describe(step)} was started by another call at the same time: this "
                "START did not open it"
            )
        if written == "gone":
            raise NotFound(f"{self._describe(step)} was ended or expired while this step ran")
        raise Aborted(
            f"another step of {self._describe(step)} ran at the same time (on another replica): "
            "this step's answer is dropped and its state unchanged; retry it"
        )

    def _describe(self, step: SequenceStep) -> str:
        return f"{step.describe()} of model {self.name}"


def _eval(pipe: Any, script: str, keys: list[str], args: list[Any]) -> int:
    pipe.eval(script, len(keys), *keys, *args)  # Redis caches the compiled script
    return 1


def connect(url: str) -> Coalesced:
    """A Redis client for `url` (redis://HOST:PORT/DB), behind the pipeline every model
    version's sequences share."""
    import redis.asyncio  # only with --sequence-store: the in-process store needs nothing

    client = redis.asyncio.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    return Coalesced(client, url)
