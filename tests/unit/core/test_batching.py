"""The batcher on its own: gathering, limits, cancellation, deadlines, failures.

The run function here is a plain numpy model that gates on events, so tests control timing
with events and single turns of the event loop, never with wall-clock waits; the real ONNX
Runtime path is covered end to end in tests/system/server/test_app.py. Over 250 lines: one gated
model drives every case.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest

from lstm_serving.core import inline
from lstm_serving.core.batching import Batcher, RunFn
from lstm_serving.core.merge import States
from lstm_serving.errors import DeadlineExceeded, QueueFull, ResourceExhausted, Unavailable


class GatedModel:
    """last_hidden = sum of steps within length; sequence = cumulative sum. Records batches."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []  # (rows, padded time) per run
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()
        self.fail = False

    def __call__(
        self,
        inputs: np.ndarray,
        lengths: np.ndarray,
        outputs: Sequence[str],
        initial: States | None = None,
    ) -> dict[str, np.ndarray]:
        self.started.set()
        assert self.release.wait(10)
        if self.fail:
            raise RuntimeError("boom")
        self.batches.append((inputs.shape[0], inputs.shape[1]))
        mask = np.arange(inputs.shape[1])[None, :] < lengths[:, None]
        seq = np.cumsum(inputs * mask[:, :, None], axis=1) * mask[:, :, None]
        results = {"last_hidden": seq[np.arange(len(lengths)), lengths - 1], "sequence": seq}
        results["final_h_0"] = results["last_hidden"][None]
        return {name: results[name] for name in outputs}


def _batcher(run: RunFn, name: str = "t", **limits: float) -> Batcher:
    """Started; runs never inline by default: a gated model must run on the worker thread."""
    settings: dict[str, float] = {
        "max_batch_size": 8,
        "max_queue_delay_s": 0.0,
        "max_queue_size": 4,
        "max_queue_steps": 2**40,
        "inline_runs": 0,
        **limits,
    }
    batcher = Batcher(
        run,
        name=name,
        max_batch_size=int(settings["max_batch_size"]),
        max_queue_delay_s=settings["max_queue_delay_s"],
        max_queue_size=int(settings["max_queue_size"]),
        max_queue_steps=int(settings["max_queue_steps"]),
        inline_runs=bool(settings["inline_runs"]),
    )
    batcher.start()
    return batcher


async def _queued() -> None:
    """One turn of the event loop: every task submitted before now has reached the queue."""
    await asyncio.sleep(0)


@pytest.fixture
async def model_and_batcher() -> AsyncIterator[tuple[GatedModel, Batcher]]:
    model = GatedModel()
    batcher = _batcher(model)
    yield model, batcher
    model.release.set()
    await batcher.stop()


def _x(rows: int, steps: int, value: float = 1.0) -> np.ndarray:
    return np.full((rows, steps, 1), value, dtype=np.float32)


async def _block(model: GatedModel, batcher: Batcher) -> asyncio.Task[object]:
    """Occupies the batcher with one running batch until model.release is set."""
    model.release.clear()
    model.started.clear()
    task = asyncio.ensure_future(batcher.submit(_x(1, 1), np.array([1], np.int32), ["last_hidden"]))
    await asyncio.to_thread(model.started.wait, 5)
    return task


async def test_queued_requests_share_one_padded_batch_and_get_own_rows(
    model_and_batcher: tuple[GatedModel, Batcher],
) -> None:
    model, batcher = model_and_batcher
    blocker = await _block(model, batcher)
    a = asyncio.ensure_future(
        batcher.submit(_x(2, 5, 1.0), np.array([5, 2], np.int32), ["last_hidden", "sequence"])
    )
    b = asyncio.ensure_future(
        batcher.submit(_x(3, 9, 2.0), np.array([1, 3, 4], np.int32), ["sequence"])
    )
    await _queued()
    model.release.set()
    await blocker
    ra, rb = await a, await b
    assert model.batches[-1] == (5, 5)  # one run, padded to the longest length (5), not time 9
    np.testing.assert_array_equal(ra["last_hidden"], [[5.0], [2.0]])
    assert set(rb) == {"sequence"}
    assert rb["sequence"].shape == (3, 9, 1)  # own time axis restored
    np.testing.assert_array_equal(rb["sequence"][:, :, 0][1], [2, 4, 6, 0, 0, 0, 0, 0, 0])


async def test_batch_limit_and_oversized_request(
    model_and_batcher: tuple[GatedModel, Batcher],
) -> None:
    model, batcher = model_and_batcher
    blocker = await _block(model, batcher)
    big = asyncio.ensure_future(batcher.submit(_x(12, 2), np.full(12, 2, np.int32), ["sequence"]))
    small = [
        asyncio.ensure_future(batcher.submit(_x(3, 2), np.full(3, 2, np.int32), ["sequence"]))
        for _ in range(3)
    ]
    await _queued()
    model.release.set()
    await asyncio.gather(blocker, big, *small)
    assert [rows for rows, _ in model.batches[1:]] == [12, 6, 3]  # oversized alone; 3+3 <= 8


async def test_full_queue_answers_resource_exhausted(
    model_and_batcher: tuple[GatedModel, Batcher],
) -> None:
    model, batcher = model_and_batcher
    blocker = await _block(model, batcher)
    queued = [
        asyncio.ensure_future(batcher.submit(_x(1, 1), np.ones(1, np.int32), ["last_hidden"]))
        for _ in range(4)
    ]
    await _queued()
    with pytest.raises(ResourceExhausted, match="--max-queue-size"):
        await batcher.submit(_x(1, 1), np.ones(1, np.int32), ["last_hidden"])
    model.release.set()
    await asyncio.gather(blocker, *queued)
    await batcher.submit(_x(1, 1), np.ones(1, np.int32), ["last_hidden"])  # recovered at once


async def test_read_ahead_fills_half_the_queue_then_waits_for_a_batch(
    model_and_batcher: tuple[GatedModel, Batcher],
) -> None:
    """A stream's message read ahead of its own answers is admitted while the queue (4) is under
    half full; past that it gets QueueFull with the wait for the next batch, while a call is
    still admitted up to the full queue."""
    model, batcher = model_and_batcher
    blocker = await _block(model, batcher)

    def one() -> asyncio.Future[object]:
        return asyncio.ensure_future(
            batcher.submit(_x(1, 1), np.ones(1, np.int32), ["last_hidden"])
        )

    second = one()  # taken at once, to run next: both of the pipeline's slots are taken
    await _queued()
    await _queued()
    queued = [one(), one()]
    await _queued()
    with pytest.raises(QueueFull, match="2 requests queued"):
        batcher.admit(1, ahead=True)
    batcher.admit(1)  # a call, or a stream's message with nothing of its stream before it

    async def ahead_when_room() -> None:
        while True:
            try:
                return batcher.admit(1, ahead=True)
            except QueueFull as full:
                await full.room()

    ahead = asyncio.ensure_future(ahead_when_room())
    await _queued()
    assert not ahead.done()
    model.release.set()
    await asyncio.wait_for(ahead, 5)  # the queued two left in the next batch
    await asyncio.gather(blocker, second, *queued)


async def test_queue_bounded_in_sequence_steps() -> None:
    """Requests queue while their sequence-steps (rows x time) fit --max-queue-steps."""
    model = GatedModel()
    batcher = _batcher(model, max_queue_steps=10)
    try:
        blocker = await _block(model, batcher)
        first = asyncio.ensure_future(
            batcher.submit(_x(2, 3), np.full(2, 3, np.int32), ["sequence"])
        )
        await _queued()
        with pytest.raises(ResourceExhausted, match="6 sequence-steps queued; this request's 5 "):
            await batcher.submit(_x(1, 5), np.ones(1, np.int32), ["last_hidden"])
        fits = asyncio.ensure_future(batcher.submit(_x(1, 4), np.ones(1, np.int32), ["sequence"]))
        await _queued()
        model.release.set()
        await asyncio.gather(blocker, first, fits)
        await batcher.submit(_x(1, 10), np.ones(1, np.int32), ["last_hidden"])  # drained
    finally:
        model.release.set()
        await batcher.stop()


async def test_cancelled_caller_does_not_disturb_the_rest(
    model_and_batcher: tuple[GatedModel, Batcher],
) -> None:
    model, batcher = model_and_batcher
    blocker = await _block(model, batcher)
    tasks = [
        asyncio.ensure_future(
            batcher.submit(_x(1, 2, float(i)), np.full(1, 2, np.int32), ["last_hidden"])
        )
        for i in range(4)
    ]
    await _queued()
    tasks[1].cancel()
    model.release.set()
    await blocker
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    for i in (0, 2, 3):
        value = results[i]
        assert isinstance(value, dict)
        np.testing.assert_array_equal(value["last_hidden"], [[2.0 * i]])
    assert model.batches[-1][0] == 3  # the cancelled one was not computed


async def test_expired_deadline_is_not_computed(
    model_and_batcher: tuple[GatedModel, Batcher],
) -> None:
    model, batcher = model_and_batcher
    blocker = await _block(model, batcher)
    expired = asyncio.ensure_future(
        batcher.submit(_x(5, 1), np.ones(5, np.int32), ["last_hidden"], deadline=time.monotonic())
    )
    alive = asyncio.ensure_future(
        batcher.submit(
            _x(1, 1), np.ones(1, np.int32), ["last_hidden"], deadline=time.monotonic() + 30
        )
    )
    await _queued()
    model.release.set()
    await blocker
    with pytest.raises(DeadlineExceeded, match="not computed"):
        await expired
    assert (await alive)["last_hidden"].shape == (1, 1)
    assert model.batches[-1][0] == 1


async def test_run_failure_reaches_every_caller_and_the_batcher_goes_on(
    model_and_batcher: tuple[GatedModel, Batcher],
) -> None:
    model, batcher = model_and_batcher
    model.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        await batcher.submit(_x(1, 1), np.ones(1, np.int32), ["last_hidden"])
    model.fail = False
    assert await batcher.submit(_x(1, 1), np.ones(1, np.int32), ["last_hidden"])


async def test_max_queue_delay_gathers_requests() -> None:
    model = GatedModel()
    batcher = _batcher(model, max_batch_size=4, max_queue_delay_s=5.0)
    started = time.monotonic()
    results = await asyncio.gather(
        *(batcher.submit(_x(1, 1), np.ones(1, np.int32), ["last_hidden"]) for _ in range(4))
    )
    assert len(results) == 4 and model.batches == [(4, 1)]
    assert time.monotonic() - started < 5.0  # a full batch does not wait out the delay
    await batcher.stop()


def _recording(threads: list[str], model: GatedModel | None = None) -> RunFn:
    """A run that notes the thread it ran on; microseconds of numpy, or `model` for batches
    of more than one sequence (a gated one can be held on the worker thread)."""

    def run(
        inputs: np.ndarray, lengths: np.ndarray, outputs: Sequence[str], initial: States | None
    ) -> dict[str, np.ndarray]:
        threads.append(threading.current_thread().name)
        if model is not None and inputs.shape[0] > 1:
            return model(inputs, lengths, outputs, initial)
        return {"last_hidden": inputs[:, -1]}

    return run


async def _until_inline(batcher: Batcher, threads: list[str], tries: int = 20) -> int:
    """Lone one-step batches until one runs inline (on this thread); how many it took. Whether
    one may is an estimate measured as the batcher runs, which one slow run on a busy machine
    can hold up for a few more."""
    for attempt in range(1, tries + 1):
        await batcher.submit(_x(1, 1), np.ones(1, np.int32), ["last_hidden"])
        if threads[-1] == threading.current_thread().name:
            return attempt
    raise AssertionError(f"no lone fast batch ran inline in {tries}: {threads}")


async def test_batches_measured_fast_run_inline_when_nobody_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inline, "PROBE_INTERVAL_S", 3600.0)  # no probing in between
    threads: list[str] = []
    batcher = _batcher(_recording(threads), inline_runs=1)
    # the first run is measured on the worker thread; later ones cost microseconds, the hop
    # to the thread and back more
    assert await _until_inline(batcher, threads) > 1
    assert threads[0].startswith("ort-t")

    slow_threads: list[str] = []
    fast = _recording(slow_threads)

    def slow_run(
        inputs: np.ndarray, lengths: np.ndarray, outputs: Sequence[str], initial: States | None
    ) -> dict[str, np.ndarray]:
        time.sleep(0.02)
        return fast(inputs, lengths, outputs, initial)

    slow = _batcher(slow_run, name="s", inline_runs=1)
    for _ in range(2):  # 20 ms a run, far more than the hop: never inline
        await slow.submit(_x(2, 10), np.full(2, 10, np.int32), ["last_hidden"])
    assert all(name.startswith("ort-s") for name in slow_threads)
    monkeypatch.setattr(inline, "PROBE_INTERVAL_S", 0.0)  # every so often, a probe for load:
    await batcher.submit(_x(1, 1), np.ones(1, np.int32), ["last_hidden"])  # on the thread
    assert threads[-1].startswith("ort-t")
    await batcher.stop()
    await slow.stop()


async def test_after_requests_arrived_during_thread_runs_the_next_batch_runs_there_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under load an inline run would answer each request before the next arrives, so none
    would ever batch: once requests arrive during worker-thread runs, the next lone batch
    goes there too; after one during which none came, a lone fast batch runs inline again."""
    monkeypatch.setattr(inline, "PROBE_INTERVAL_S", 3600.0)
    model = GatedModel()
    threads: list[str] = []
    batcher = _batcher(_recording(threads, model), inline_runs=1)
    await _until_inline(batcher, threads)  # measured on the thread, then fast enough inline
    model.release.clear()  # a long batch, so to the thread; it waits for the gate there
    model.started.clear()
    blocker = asyncio.ensure_future(
        batcher.submit(_x(8, 500), np.full(8, 500, np.int32), ["last_hidden"])
    )
    await asyncio.to_thread(model.started.wait, 5)
    arrived = asyncio.ensure_future(  # while the long one runs: behind it, on the thread
        batcher.submit(_x(1, 1), np.ones(1, np.int32), ["last_hidden"])
    )
    await _queued()
    model.release.set()
    await blocker
    await arrived
    before = len(threads)
    # alone, but a request arrived during the last runs: to the thread, where none arrive;
    # after that, inline again
    await _until_inline(batcher, threads)
    await batcher.stop()
    main = threading.current_thread().name
    assert threads[before - 2] != main and threads[before - 1] != main  # blocker, arrived
    assert threads[before] != main


async def test_stop_answers_queued_requests_unavailable() -> None:
    batcher = _batcher(GatedModel(), max_batch_size=4, max_queue_delay_s=30.0)
    pending = asyncio.ensure_future(batcher.submit(_x(1, 1), np.ones(1, np.int32), ["sequence"]))
    await _queued()
    await batcher.stop()
    with pytest.raises(Unavailable):
        await pending
    with pytest.raises(Unavailable):
        await batcher.submit(_x(1, 1), np.ones(1, np.int32), ["sequence"])


async def test_stop_during_a_run_answers_every_request(
    model_and_batcher: tuple[GatedModel, Batcher],
) -> None:
    """Batches handed to the worker (the one running, the next one waiting) finish and are
    answered; what still waited in the queue is refused; nothing hangs."""
    model, batcher = model_and_batcher
    running = await _block(model, batcher)
    handed_over = asyncio.ensure_future(
        batcher.submit(_x(1, 1), np.ones(1, np.int32), ["last_hidden"])
    )
    await _queued()
    await _queued()  # the batcher forms the next batch while the first one runs
    queued = asyncio.ensure_future(batcher.submit(_x(1, 1), np.ones(1, np.int32), ["last_hidden"]))
    await _queued()
    stopping = asyncio.ensure_future(batcher.stop())
    await _queued()
    assert not stopping.done()  # waits for the batches on the worker thread
    model.release.set()
    await asyncio.wait_for(stopping, 10)
    assert (await running)["last_hidden"].shape == (1, 1)  # type: ignore[index]
    assert (await handed_over)["last_hidden"].shape == (1, 1)
    with pytest.raises(Unavailable, match="shutting down"):
        await queued
    assert len(model.batches) == 2


async def test_the_next_batch_waits_on_the_worker_while_one_runs(
    model_and_batcher: tuple[GatedModel, Batcher],
) -> None:
    """Two batches are handed over at most; a third request waits in the queue."""
    model, batcher = model_and_batcher
    running = await _block(model, batcher)
    tasks = []
    for _ in range(3):
        tasks.append(
            asyncio.ensure_future(batcher.submit(_x(1, 1), np.ones(1, np.int32), ["last_hidden"]))
        )
        await _queued()
        await _queued()
    model.release.set()
    await asyncio.gather(running, *tasks)
    assert [rows for rows, _ in model.batches] == [1, 1, 2]  # the last two waited together
