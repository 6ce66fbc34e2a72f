"""The one protocol-neutral path of an inference: resolve the model, validate, submit, answer.

Both protocol servicers decode their message into an `InferRequest`, call `DataPlane.infer`
(or `submit`, to read on before the answer) and encode the `InferResult`; what a request may
hold is checked here, once.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from lstm_serving.core import masking, validation
from lstm_serving.core.batching import RunTiming
from lstm_serving.core.merge import Arrays
from lstm_serving.core.registry import Registry, ServedModel
from lstm_serving.core.requests import InferRequest, InferResult
from lstm_serving.core.runtime import Model
from lstm_serving.core.settings import Settings
from lstm_serving.core.validation import Checked, Limits

# The runs of the call being traced (set by the server's tracing, one list per call); None, as
# when tracing is off, records nothing.
TRACED_RUNS: ContextVar[list[RunTiming] | None] = ContextVar("traced_runs", default=None)


def _traced(served: ServedModel) -> RunTiming | None:
    runs = TRACED_RUNS.get()
    if runs is None:
        return None
    runs.append(RunTiming(served.model.name, served.model.version))
    return runs[-1]


# What a caller holds for a request until its answer is sent, reserved before the contents
# are read: called with the request's input bytes and its answer's bytes; raises to refuse.
Reserve = Callable[[int, int], None]


class Pending:
    """An accepted request on its way: its rows come from the batcher (or a sequence's step),
    and `result` is the answer. A caller may hold several (a stream) and await them in order."""

    __slots__ = ("_answer", "_checked", "_served")

    def __init__(self, served: ServedModel, checked: Checked, answer: Awaitable[Arrays]) -> None:
        self._served, self._checked, self._answer = served, checked, answer

    async def result(self) -> InferResult:
        arrays = await self._answer
        model, checked = self._served.model, self._checked
        if checked.compaction is not None:
            arrays = masking.restore(arrays, checked.compaction, model.architecture)
        return InferResult(model.name, model.version, model.architecture, arrays)

    def cancel(self) -> None:
        """Its answer is no longer wanted (a queued request is then skipped, not run)."""
        if isinstance(self._answer, asyncio.Future):
            self._answer.cancel()
        elif inspect.iscoroutine(self._answer):
            self._answer.close()


class DataPlane:
    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.limits = Limits.of(settings)

    def model(self, name: str, version: int = 0) -> Model:
        return self.registry.resolve(name, version).model

    async def infer(self, request: InferRequest, reserve: Reserve | None = None) -> InferResult:
        return await self.submit(request, reserve).result()

    def submit(
        self,
        request: InferRequest,
        reserve: Reserve | None = None,
        in_order: bool = False,
        ahead: bool = False,
    ) -> Pending:
        """One pass over a request, without an await: the model resolved; the shape, limits,
        admission, outputs and answer size checked; the bytes reserved; the contents decoded;
        the rows queued. A sequence's step runs once awaited, or at once with `in_order` (a
        stream that reads on while earlier answers run). `ahead`: a stream's message read
        ahead of its stream's unanswered ones (`Batcher.admit`)."""
        served = self.registry.resolve(request.model, request.version)
        arch = served.model.architecture
        sized = validation.size_request(request, arch, self.limits)
        served.batcher.admit(sized.batch * sized.steps, ahead)
        if reserve is not None:
            reserve(request.inputs.sent_bytes, sized.answer_bytes)
        checked = validation.check_request(request, arch, sized)
        timing = _traced(served)
        answer: Awaitable[Arrays]
        if request.sequence is None:
            answer = served.batcher.enqueue(
                checked.inputs,
                checked.lengths,
                checked.outputs,
                request.deadline,
                checked.initial,
                timing,
            )
        else:
            answer = self._step(served, request, checked, timing)
            if in_order:
                answer = asyncio.ensure_future(answer)
        return Pending(served, checked, answer)

    async def _step(
        self,
        served: ServedModel,
        request: InferRequest,
        checked: Checked,
        timing: RunTiming | None,
    ) -> Arrays:
        """One step of a server-held sequence: from its state, keeping the state it ends in."""
        step, arch = request.sequence, served.model.architecture
        assert step is not None
        validation.check_sequence_step(step, arch, checked)
        carried = arch.state_outputs()
        outputs = checked.outputs + tuple(n for n in carried if n not in checked.outputs)
        steps = int(checked.lengths[0])
        caller = request.caller
        async with served.sequences.step(
            step, caller.owner, checked.initial, steps, caller.counted_as
        ) as stepping:
            arrays = await served.batcher.submit(
                checked.inputs, checked.lengths, outputs, request.deadline, stepping.initial, timing
            )
            stepping.final = arch.carry(arrays)
        return {name: arrays[name] for name in checked.outputs}
