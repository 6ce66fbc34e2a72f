"""The one protocol-neutral path of an inference: resolve the model, validate, submit, answer.

Both protocol servicers decode their message into an `InferRequest`, call `DataPlane.infer`
and encode the `InferResult`; what a request may hold is checked here, once.
"""

from __future__ import annotations

from contextvars import ContextVar

from lstm_serving.core import masking, validation
from lstm_serving.core.batching import RunTiming
from lstm_serving.core.merge import Arrays
from lstm_serving.core.registry import Registry, ServedModel
from lstm_serving.core.requests import InferRequest, InferResult
from lstm_serving.core.runtime import Model
from lstm_serving.core.settings import Settings
from lstm_serving.core.validation import Checked, Limits
from lstm_serving.errors import ServingError

# The runs of the call being traced (set by the server's tracing, one list per call); None, as
# when tracing is off, records nothing.
TRACED_RUNS: ContextVar[list[RunTiming] | None] = ContextVar("traced_runs", default=None)


def _traced(served: ServedModel) -> RunTiming | None:
    runs = TRACED_RUNS.get()
    if runs is None:
        return None
    runs.append(RunTiming(served.model.name, served.model.version))
    return runs[-1]


class DataPlane:
    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.limits = Limits.of(settings)

    def model(self, name: str, version: int = 0) -> Model:
        return self.registry.resolve(name, version).model

    async def infer(self, request: InferRequest) -> InferResult:
        served = self.registry.resolve(request.model, request.version)
        timing = _traced(served)
        arch = served.model.architecture
        served.batcher.admit(validation.check_input_shape(request.inputs.shape, arch, self.limits))
        checked = validation.check_request(request, arch, self.limits)
        if request.sequence is not None:
            arrays = await self._step(served, request, checked, timing)
        else:
            arrays = await served.batcher.submit(
                checked.inputs,
                checked.lengths,
                checked.outputs,
                request.deadline,
                checked.initial,
                timing,
            )
        if checked.compaction is not None:
            arrays = masking.restore(arrays, checked.compaction, arch)
        return InferResult(served.model.name, served.model.version, arch, arrays)

    def answer_bytes(self, request: InferRequest) -> int:
        """The bytes `request`'s answer will have; 0 for a request that will be refused."""
        try:
            served = self.registry.resolve(request.model, request.version)
            batch, steps = request.inputs.shape[:2]
            arch = served.model.architecture
            names = validation.check_outputs(validation.output_names(request, arch), arch)
        except (ServingError, ValueError):
            return 0
        return validation.answer_bytes(names, arch, batch, steps)

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
