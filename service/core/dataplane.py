"""The one protocol-neutral path of an inference: resolve the model, validate, submit, answer.

Both protocol servicers decode their message into an `InferRequest`, call `DataPlane.infer`
and encode the `InferResult`; what a request may hold is checked here, once.
"""

from __future__ import annotations

from lstm_serving.core import validation
from lstm_serving.core.registry import Registry
from lstm_serving.core.requests import InferRequest, InferResult
from lstm_serving.core.runtime import Model
from lstm_serving.core.settings import Settings


class DataPlane:
    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self._settings = settings

    def model(self, name: str, version: int = 0) -> Model:
        return self.registry.resolve(name, version).model

    async def infer(self, request: InferRequest) -> InferResult:
        served = self.registry.resolve(request.model, request.version)
        served.batcher.admit()
        arch = served.model.architecture
        inputs, lengths, outputs = validation.check_request(
            request,
            arch,
            self._settings.max_sequence_length,
            self._settings.max_request_sequences,
        )
        arrays = await served.batcher.submit(inputs, lengths, outputs, request.deadline)
        return InferResult(served.model.name, served.model.version, arch, arrays)
