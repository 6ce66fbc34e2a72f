"""The dynamic batcher: concurrent requests in, one padded ONNX Runtime run, rows back out.

Knows numpy and asyncio only, no protocol. One per loaded model version. Requests wait in a
bounded FIFO queue; a background task takes the oldest, adds more until the batch holds
`max_batch_size` sequences or `max_queue_delay` has passed since the oldest arrived, pads to
the longest length in the batch, runs it in a worker thread and hands each caller its own
rows (merging and splitting: `merge`). Lengths go to the LSTM as `sequence_lens`, so no
caller's answer depends on what else shared its batch (bit for bit). A request larger than
`max_batch_size` runs as its own batch. Every submitted request ends answered or failed,
whatever stops. Over 250 lines: the queue, its pipeline and its stop are one state machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from lstm_serving.core.inline import InlinePolicy
from lstm_serving.core.merge import Arrays, Part, States, check_rows, merge, split
from lstm_serving.errors import DeadlineExceeded, QueueFull, Unavailable

log = logging.getLogger(__name__)
# Batches handed to the worker thread at once: the next is formed and waiting while the current
# runs, so the thread goes from one to the next without waiting for the event loop, which in
# overload is busy refusing calls (docs/decisions.md).
PIPELINE_DEPTH = 2
# (inputs [B, T, F], lengths [B], outputs, initial states or None for zeros) -> outputs
RunFn = Callable[[np.ndarray, np.ndarray, Sequence[str], States | None], Arrays]


@dataclass
class RunTiming:
    """When one traced request waited and ran (time.monotonic seconds), filled in by the
    batcher for the tracing spans; the model is named by whoever asked."""

    model: str = ""
    version: int = 0
    queued: float = 0.0  # when it joined the queue
    started: float = 0.0  # when its batch was handed to ONNX Runtime
    compute_seconds: float = 0.0  # the batch's run itself
    batch_size: int = 0  # sequences in that batch


@dataclass(frozen=True)
class BatchReport:
    """One run, as the metrics see it."""

    lengths: np.ndarray  # every sequence run
    waits: list[float]  # per request: seconds it waited in the queue
    longest: list[int]  # per request: its longest sequence
    compute_seconds: float


class BatchObserver(Protocol):
    """What the batcher reports (the metrics implement it); called on the event loop."""

    def queue_changed(self, depth: int) -> None: ...

    def batch_ran(self, report: BatchReport) -> None: ...


class _Unobserved:
    def queue_changed(self, depth: int) -> None:
        pass

    def batch_ran(self, report: BatchReport) -> None:
        pass


@dataclass(slots=True)
class _Request(Part):
    """A queued request: its rows (the `Part` the merge reads), what it asks for, its future."""

    outputs: tuple[str, ...]
    deadline: float | None  # time.monotonic() value, or None for no deadline
    future: asyncio.Future[Arrays]
    timing: RunTiming | None = None
    arrived: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        return int(self.inputs.shape[0])


class Batcher:
    def __init__(
        self,
        run: RunFn,
        *,
        name: str,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        max_queue_steps: int = 2**62,
        observer: BatchObserver | None = None,
        inline_runs: bool = True,
    ) -> None:
        self._run_fn = run
        self._observer: BatchObserver = observer or _Unobserved()
        self._inline = InlinePolicy(inline_runs)
        self._submitted = 0  # requests submitted so far
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.max_queue_steps = max_queue_steps
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._queued_steps = 0  # sequence-steps (rows x padded time) waiting
        self._arrival = asyncio.Event()
        self._taken = asyncio.Event()  # set as requests leave the queue
        self._task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(PIPELINE_DEPTH)
        self._runs: set[asyncio.Task[None]] = set()  # batches handed over, not yet answered
        self._stopping = False
        self._executor: ThreadPoolExecutor | None = None
        self._idle = asyncio.Event()  # set while nothing is queued or running
        self._idle.set()

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"ort-{self.name}")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batch-{self.name}")

    async def stop(self) -> None:
        """Stops taking requests; the batch running finishes, those queued get UNAVAILABLE."""
        self._stopping = True
        self._arrival.set()
        self._taken.set()
        if self._task is not None:
            await self._task
            self._task = None
        while self._queue:
            self._fail(self._queue.popleft(), Unavailable(f"model {self.name} is shutting down"))
        self._queued_rows = self._queued_steps = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def drain(self) -> None:
        """Finishes every queued request, then stops (for a version being removed)."""
        await self.wait_idle()
        await self.stop()

    def admit(self, steps: int, ahead: bool = False) -> None:
        """Raises unless a request of `steps` sequence-steps can be queued now: callers check
        before decoding anything, so a refusal in overload costs as little as it can. A
        stream's message read `ahead` of its stream's unanswered ones may fill the queue only
        halfway (its stream waits for `taken` instead): the rest is kept for calls and for each
        stream's next message, so what streams read ahead never gets a caller refused."""
        if self._task is None or self._stopping:
            raise Unavailable(f"model {self.name} is not accepting requests (shutting down)")
        share = 2 if ahead else 1
        if len(self._queue) * share >= self.max_queue_size:
            raise QueueFull(
                f"model {self.name} has {len(self._queue)} requests queued (the limit, "
                "--max-queue-size): retry with backoff",
                self.taken,
            )
        if (self._queued_steps + steps) * share > self.max_queue_steps and self._queue:
            raise QueueFull(
                f"model {self.name} has {self._queued_steps} sequence-steps queued; this "
                f"request's {steps} would pass the limit of {self.max_queue_steps} "
                "(--max-queue-steps): retry with backoff",
                self.taken,
            )

    async def taken(self) -> None:
        """Waits until the next batch leaves the queue (or the batcher stops)."""
        self._taken.clear()
        await self._taken.wait()

    async def submit(
        self,
        inputs: np.ndarray,
        lengths: np.ndarray,
        outputs: Sequence[str],
        deadline: float | None = None,
        initial: States | None = None,
        timing: RunTiming | None = None,
    ) -> Arrays:
        """Admits and queues one request, and waits for its own rows of the requested outputs."""
        self.admit(inputs.shape[0] * inputs.shape[1])
        return await self.enqueue(inputs, lengths, outputs, deadline, initial, timing)

    def enqueue(
        self,
        inputs: np.ndarray,
        lengths: np.ndarray,
        outputs: Sequence[str],
        deadline: float | None = None,
        initial: States | None = None,
        timing: RunTiming | None = None,
    ) -> asyncio.Future[Arrays]:
        """Queues a request `admit` has just let in (no await between), and returns the future
        of its rows: a caller that reads on (a stream) keeps them in order without a task."""
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        request = _Request(inputs, lengths, initial, tuple(outputs), deadline, future, timing)
        self._submitted += 1
        self._queue.append(request)
        self._queued_rows += inputs.shape[0]
        self._queued_steps += inputs.shape[0] * inputs.shape[1]
        self._idle.clear()
        self._arrival.set()
        return future

    async def _loop(self) -> None:
        while not self._stopping:
            if not self._queue:
                self._arrival.clear()
                await self._arrival.wait()
                continue
            close_at = self._queue[0].arrived + self.max_queue_delay_s
            while self._queued_rows < self.max_batch_size and not self._stopping:
                remaining = close_at - time.monotonic()
                if remaining <= 0:
                    break
                self._arrival.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrival.wait(), remaining)
            await self._slots.acquire()
            if self._stopping:
                self._slots.release()
                break
            batch = self._take()
            self._observer.queue_changed(len(self._queue))
            alone = not self._runs and not self._queue
            if not batch or self._inline.runs_inline(_steps(batch), alone):
                if batch:
                    await self._run(batch, inline=True)
                self._slots.release()
                self._settle()
                continue
            task = asyncio.get_running_loop().create_task(self._run(batch, inline=False))
            self._runs.add(task)
            task.add_done_callback(self._ran)
        if self._runs:  # every batch handed over is answered before stop() returns
            await asyncio.wait(self._runs)
        self._idle.set()

    def _ran(self, task: asyncio.Task[None]) -> None:
        self._runs.discard(task)
        self._slots.release()
        self._settle()

    def _settle(self) -> None:
        if not self._queue and not self._runs:
            self._idle.set()

    def _take(self) -> list[_Request]:
        """The oldest requests that fit; drops cancelled ones and those past their deadline."""
        batch: list[_Request] = []
        rows = 0
        now = time.monotonic()
        while self._queue:
            request = self._queue[0]
            if batch and rows + request.rows > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_rows -= request.rows
            self._queued_steps -= request.rows * request.inputs.shape[1]
            if request.future.done():  # the caller went away
                continue
            if request.deadline is not None and request.deadline <= now:
                self._fail(
                    request,
                    DeadlineExceeded(
                        f"deadline passed after {now - request.arrived:.3f}s in the queue of "
                        f"model {self.name}; not computed"
                    ),
                )
                continue
            batch.append(request)
            rows += request.rows
        self._taken.set()
        return batch

    async def _run(self, batch: list[_Request], inline: bool) -> None:
        """One batch: on the event loop when `inline` (this never suspends), else on the
        worker thread with the event loop free meanwhile."""
        inputs, lengths, initial = merge(batch)
        outputs = sorted({name for request in batch for name in request.outputs})
        started = time.monotonic()
        try:
            if inline:
                results, compute = self._timed_run(inputs, lengths, outputs, initial)
            else:
                handed, submitted = time.perf_counter(), self._submitted
                results, compute = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._timed_run, inputs, lengths, outputs, initial
                )
                hop = time.perf_counter() - handed - compute
                self._inline.ran_on_thread(hop, arrivals=self._submitted > submitted)
            self._inline.ran(inputs.shape[0] * inputs.shape[1], compute)
            check_rows(results, inputs.shape[0])
        except asyncio.CancelledError:
            for request in batch:
                self._fail(request, Unavailable(f"model {self.name} stopped during this batch"))
            raise
        except Exception as exc:
            log.exception("batch of %d requests on model %s failed", len(batch), self.name)
            for request in batch:
                self._fail(request, exc)
            return
        start = 0
        for request in batch:
            if request.timing is not None:
                request.timing.queued, request.timing.started = request.arrived, started
                request.timing.compute_seconds, request.timing.batch_size = compute, len(lengths)
            if not request.future.done():
                request.future.set_result(
                    split(results, request.outputs, start, request.rows, request.inputs.shape[1])
                )
            start += request.rows
        asyncio.get_running_loop().call_soon(self._report, batch, lengths, started, compute)

    def _report(
        self, batch: list[_Request], lengths: np.ndarray, started: float, compute: float
    ) -> None:
        """A batch's metrics, once its callers have their answers."""
        every, longest, first = lengths.tolist(), [], 0
        for request in batch:
            longest.append(max(every[first : first + request.rows]))
            first += request.rows
        waits = [started - request.arrived for request in batch]
        self._observer.batch_ran(BatchReport(lengths, waits, longest, compute))

    def _timed_run(
        self,
        inputs: np.ndarray,
        lengths: np.ndarray,
        outputs: Sequence[str],
        initial: States | None,
    ) -> tuple[Arrays, float]:
        """The run and its own duration, without the hop to and from the worker thread."""
        began = time.perf_counter()
        results = self._run_fn(inputs, lengths, outputs, initial)
        return results, time.perf_counter() - began

    @staticmethod
    def _fail(request: _Request, exc: Exception) -> None:
        if not request.future.done():
            request.future.set_exception(exc)


def _steps(batch: list[_Request]) -> int:
    """Sequence-steps the batch runs once padded: its rows times its longest time."""
    return sum(r.rows for r in batch) * max(int(r.inputs.shape[1]) for r in batch)
