"""The loaded models: name -> version -> (ONNX Runtime model, its batcher)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from service.batching import Batcher
from service.config import Settings
from service.errors import NotFound, Unavailable
from service.metrics import Metrics
from service.runtime import Model, ModelFile, scan_repository

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    model: Model
    batcher: Batcher


class Registry:
    def __init__(self) -> None:
        self._models: dict[str, dict[int, ServedModel]] = {}
        self.ready = False

    def add(self, served: ServedModel) -> None:
        self._models.setdefault(served.model.name, {})[served.model.version] = served

    def remove(self, name: str, version: int) -> ServedModel:
        """Unpublishes a version at once; the caller drains its batcher."""
        versions = self._models[name]
        served = versions.pop(version)
        if not versions:
            del self._models[name]
        return served

    def loaded(self) -> set[tuple[str, int]]:
        return {(name, v) for name, versions in self._models.items() for v in versions}

    def versions(self) -> dict[str, list[int]]:
        return {name: sorted(versions) for name, versions in sorted(self._models.items())}

    def resolve(self, name: str, version: int = 0) -> ServedModel:
        """The named version, or the newest when version is 0."""
        if not self.ready:
            raise Unavailable("the server is starting or stopping: models are not ready")
        versions = self._models.get(name)
        if versions is None:
            known = ", ".join(sorted(self._models)) or "none"
            raise NotFound(f"model {name!r} is not loaded (loaded models: {known})")
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            raise NotFound(
                f"model {name!r} has no version {version} (loaded versions: "
                f"{', '.join(map(str, sorted(versions)))})"
            )
        return versions[version]

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


def load_models(settings: Settings) -> list[Model]:
    """Loads and warms every version in the repository; raises on the first that fails."""
    return [load_model(file, settings) for file in scan_repository(settings.repository)]


def load_model(file: ModelFile, settings: Settings) -> Model:
    """Loads, checks and warms one version (blocking: call it off the event loop)."""
    threads = settings.threads_per_worker()
    model = Model(file, settings.device, threads)
    model.warm_up(settings.max_batch_size)
    log.info(
        "loaded %s version %d (%s, %d threads): %s",
        model.name,
        model.version,
        model.provider,
        threads,
        file.path,
    )
    return model


def serve_models(
    registry: Registry, models: list[Model], settings: Settings, metrics: Metrics
) -> None:
    """Gives each model a running batcher and opens the registry; needs a running loop."""
    for model in models:
        batcher = Batcher(
            model.run,
            name=f"{model.name}:{model.version}",
            max_batch_size=settings.max_batch_size,
            max_queue_delay_s=settings.max_queue_delay_ms / 1000,
            max_queue_size=settings.max_queue_size,
            observer=metrics.batch_observer(model.name, model.provider),
        )
        metrics.model_info.labels(model.name, str(model.version), model.provider).set(1)
        batcher.start()
        registry.add(ServedModel(model, batcher))
    registry.ready = True
