"""When a batch runs on the event loop instead of the worker thread: the inline-run policy.

A lone batch whose run is cheaper than the hop to the worker thread and back is faster run
inline. Under load, though, a batch run inline answers its caller before the next request is
even accepted, so no batch ever holds two requests, and that state keeps itself up. So a lone
batch goes to the thread when requests arrived during the thread runs since the last lone one,
and one goes there every PROBE_INTERVAL_S to see whether they do (docs/decisions.md).
"""

from __future__ import annotations

import time

# A batch that could run inline is sent to the worker thread at least this often, to see
# whether requests arrive while it runs (then later ones batch on the thread).
PROBE_INTERVAL_S = 0.05
_UNMEASURED = float("inf")


class InlinePolicy:
    """What the batcher measures as it runs, and the decision it takes from that. Both costs
    are measured on this machine as it runs: a fixed threshold made a cliff between machines."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._step_seconds = _UNMEASURED  # a run's seconds per sequence-step (moving average)
        # the least a worker-thread run has cost beyond its compute: the hop's own cost (more
        # is the event loop being busy, which running inline would not save)
        self._hop_seconds = _UNMEASURED
        self._arrived_during_runs = False  # requests came while a worker-thread run ran
        self._thread_run_ended = 0.0  # time.monotonic() when one last came back

    def runs_inline(self, steps: int, alone: bool) -> bool:
        """Whether a batch of `steps` sequence-steps runs on the event loop; `alone`: nothing
        else is queued or running."""
        if not self.enabled or not alone:
            return False
        if self._arrived_during_runs:  # batch on the thread again, and see if requests come
            self._arrived_during_runs = False
            return False
        if time.monotonic() - self._thread_run_ended > PROBE_INTERVAL_S:
            return False
        return steps * self._step_seconds <= self._hop_seconds < _UNMEASURED

    def ran(self, steps: int, compute_seconds: float) -> None:
        """Every run, inline or not: its compute time."""
        per_step = compute_seconds / steps
        if self._step_seconds == _UNMEASURED:
            self._step_seconds = per_step
        else:
            self._step_seconds = 0.8 * self._step_seconds + 0.2 * per_step

    def ran_on_thread(self, hop_seconds: float, arrivals: bool) -> None:
        """A worker-thread run came back: what the hop cost, and whether requests arrived."""
        self._hop_seconds = min(hop_seconds, self._hop_seconds)
        self._arrived_during_runs |= arrivals
        self._thread_run_ended = time.monotonic()
