"""The loaded models: name -> version -> (ONNX Runtime model, its batcher)."""

from __future__ import annotations

from dataclasses import dataclass

from lstm_serving.core.batching import Batcher
from lstm_serving.core.runtime import Model
from lstm_serving.core.sequences import Sequences
from lstm_serving.core.shared_sequences import Coalesced
from lstm_serving.errors import NotFound, Unavailable


@dataclass
class ServedModel:
    model: Model
    batcher: Batcher
    sequences: Sequences


class Registry:
    def __init__(self) -> None:
        self._models: dict[str, dict[int, ServedModel]] = {}
        self._versions: dict[str, list[int]] = {}  # what ListModels answers, kept current
        self.ready = False
        # --sequence-store: the Redis pipeline every model version's sequences share; None:
        # sequences live in this process
        self.shared_store: Coalesced | None = None

    def add(self, served: ServedModel) -> None:
        self._models.setdefault(served.model.name, {})[served.model.version] = served
        self._index()

    def remove(self, name: str, version: int) -> ServedModel:
        """Unpublishes a version at once; the caller drains its batcher."""
        versions = self._models[name]
        served = versions.pop(version)
        if not versions:
            del self._models[name]
        self._index()
        return served

    def _index(self) -> None:
        self._versions = {name: sorted(versions) for name, versions in sorted(self._models.items())}

    def loaded(self) -> set[tuple[str, int]]:
        return {(name, v) for name, versions in self._versions.items() for v in versions}

    def versions(self) -> dict[str, list[int]]:
        return self._versions

    def has(self, name: str) -> bool:
        return name in self._models

    def resolve(self, name: str, version: int = 0) -> ServedModel:
        """The named version, or the newest when version is 0."""
        if not self.ready:
            raise Unavailable("the server is starting or stopping: models are not ready")
        versions = self._models.get(name)
        if versions is None:
            known = ", ".join(self._versions) or "none"
            raise NotFound(f"model {name!r} is not loaded (loaded models: {known})")
        if version == 0:
            return versions[self._versions[name][-1]]
        if version not in versions:
            raise NotFound(
                f"model {name!r} has no version {version} (loaded versions: "
                f"{', '.join(map(str, self._versions[name]))})"
            )
        return versions[version]

    def served(self, name: str, version: int) -> ServedModel:
        """A loaded version, whether or not the server is ready."""
        return self._models[name][version]

    def all(self) -> list[ServedModel]:
        return [served for versions in self._models.values() for served in versions.values()]

    async def wait_idle(self) -> None:
        """Until no batcher has a request queued or running."""
        for served in self.all():
            await served.batcher.wait_idle()

    async def stop(self) -> None:
        self.ready = False
        for served in self.all():
            await served.batcher.stop()
            served.sequences.stop()
