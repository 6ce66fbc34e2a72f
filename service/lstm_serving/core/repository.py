"""The model repository on disk and what is served from it: scan, load, publish, reload.

ROOT/<name>/<version>/model.onnx, version a plain ASCII integer >= 1, inside ROOT once links
are resolved (unless --allow-outside-links). A reload serves versions new to the repository,
drains removed ones and reloads a served file changed in place; a file that cannot be served
changes nothing (logged with the file and why, counted in
lstm_model_reloads_total{result="rejected"}; a changed file's old copy goes on serving).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lstm_serving.core.batching import Batcher
from lstm_serving.core.metrics import Metrics
from lstm_serving.core.registry import Registry, ServedModel
from lstm_serving.core.runtime import FileSignature, Model, file_signature
from lstm_serving.core.sequences import Sequences, SequenceStore
from lstm_serving.core.settings import Settings
from lstm_serving.core.shared_sequences import RedisSequences
from lstm_serving.errors import ConfigurationError, ModelLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFile:
    name: str
    version: int
    path: Path


def _version(folder: str) -> int | None:
    return int(folder) if folder.isascii() and folder.isdigit() and int(folder) > 0 else None


def _candidates(root: Path, model_name: str) -> Iterator[tuple[str, str, Path]]:
    """(model name, version folder, file) for each model.onnx where the layout puts one."""
    if not model_name:
        for path in root.glob("*/*/model.onnx"):
            yield path.parent.parent.name, path.parent.name, path
        return
    for path in root.glob("*/model.onnx"):
        yield model_name, path.parent.name, path
    if (root / "model.onnx").is_file():  # one file, no version folder: version 1
        yield model_name, "1", root / "model.onnx"


def scan_repository(
    root: Path, allow_outside_links: bool = False, model_name: str = ""
) -> list[ModelFile]:
    """Every version's file, sorted; raises ModelLoadError when there is nothing to serve.

    With `model_name`, `root` is that one model's folder (KServe mounts one at /mnt/models):
    root/<version>/model.onnx, or root/model.onnx as version 1."""
    if not root.is_dir():
        raise ModelLoadError(f"model repository {root} is not a directory")
    found: dict[tuple[str, int], ModelFile] = {}
    inside = root.resolve()
    for name, folder, path in _candidates(root, model_name):
        version = _version(folder)
        if version is None:
            log.warning("ignored %s: version folders are integers >= 1", path)
            continue
        target = path.resolve()
        if not allow_outside_links and not target.is_relative_to(inside):
            log.warning(
                "ignored %s: it links outside the repository, to %s (--allow-outside-links "
                "serves it)",
                path,
                target,
            )
            continue
        if (name, version) in found:
            log.warning(
                "ignored %s: %s is version %d too", path, found[name, version].path, version
            )
            continue
        found[name, version] = ModelFile(name, version, path)
    if not found:
        layout = (
            "<version>/model.onnx or model.onnx" if model_name else "<name>/<version>/model.onnx"
        )
        raise ModelLoadError(
            f"no models in {root}: expected {root}/{layout} (make one with lstm-export)"
        )
    return sorted(found.values(), key=lambda m: (m.name, m.version))


def load_model(file: ModelFile, settings: Settings) -> Model:
    """Loads, checks and warms one version (blocking: call it off the event loop)."""
    threads = settings.threads_per_worker()
    model = Model(file.path, file.name, file.version, settings.device, threads)
    try:
        model.warm_up(settings.max_batch_size)
    except Exception as exc:  # ORT's own types: a graph that disagrees with its metadata
        raise ModelLoadError(f"{file.path}: it does not run as its metadata says: {exc}") from exc
    log.info(
        "loaded %s version %d (%s, %d threads): %s",
        model.name,
        model.version,
        model.provider,
        threads,
        file.path,
    )
    return model


def load_models(settings: Settings) -> list[Model]:
    """Loads and warms every version in the repository; raises on the first that fails."""
    return [load_model(file, settings) for file in scan(settings)]


def scan(settings: Settings) -> list[ModelFile]:
    return scan_repository(settings.repository, settings.allow_outside_links, settings.model_name)


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
            max_queue_steps=settings.max_queue_steps,
            observer=metrics.batch_observer(model.name, model.provider),
        )
        name = f"{model.name}:{model.version}"
        limits = (settings.max_sequences, settings.sequence_idle_timeout)
        observer = metrics.sequence_observer(model.name)
        waiting, per_owner = settings.max_queue_size, settings.max_sequences_per_owner
        sequences: Sequences = (
            SequenceStore(name, *limits, observer, waiting, per_owner)
            if registry.shared_store is None
            else RedisSequences(registry.shared_store, name, *limits, observer, waiting, per_owner)
        )
        metrics.model_served(model.name, model.version, model.provider)
        batcher.start()
        sequences.start()
        registry.add(ServedModel(model, batcher, sequences))
    registry.ready = True


class RepositorySync:
    """Keeps the registry in step with the repository (on SIGHUP or every --reload-interval)."""

    def __init__(self, registry: Registry, settings: Settings, metrics: Metrics) -> None:
        self._registry, self._settings, self._metrics = registry, settings, metrics
        self._lock = asyncio.Lock()
        self._rejected: dict[tuple[str, int], FileSignature] = {}  # the file when refused

    async def reload(self) -> None:
        async with self._lock:
            try:
                files = {(f.name, f.version): f for f in scan(self._settings)}
            except ModelLoadError as exc:
                log.error("reload skipped, nothing changed: %s", exc)
                return
            loaded = self._registry.loaded()
            for key in sorted(files.keys() - loaded):
                await self._add(files[key])
            for key in sorted(files.keys() & loaded):
                served = self._registry.served(*key)
                if file_signature(files[key].path) != served.model.file_signature:
                    await self._add(files[key], replacing=served)
            for name, version in sorted(loaded - files.keys()):
                served = self._registry.remove(name, version)
                self._metrics.model_info.remove(name, str(version), served.model.provider)
                await _retire(served)
                self._metrics.reloads.labels(name, "removed").inc()
                log.info("removed %s version %d (drained)", name, version)

    async def _add(self, file: ModelFile, replacing: ServedModel | None = None) -> None:
        """Serves a new version, or a served version's file changed in place."""
        key = (file.name, file.version)
        signature = file_signature(file.path)
        if self._rejected.get(key) == signature:
            return  # refused before and unchanged since
        try:
            model = await asyncio.to_thread(load_model, file, self._settings)
        except ConfigurationError as exc:
            self._rejected[key] = signature
            self._metrics.reloads.labels(file.name, "rejected").inc()
            if replacing is None:
                log.error("rejected %s version %d, still serving the others: %s", *key, exc)
            else:
                log.error(
                    "rejected the changed file of %s version %d, still serving the copy loaded "
                    "before (a restart would fail on this file): %s",
                    *key,
                    exc,
                )
            return
        serve_models(self._registry, [model], self._settings, self._metrics)
        self._metrics.reloads.labels(file.name, "loaded").inc()
        if replacing is None:
            log.info("now serving %s version %d", *key)
            return
        await _retire(replacing)
        log.info(
            "reloaded %s version %d: its file changed in place (the old copy drained; its "
            "server-held sequences ended)",
            *key,
        )


async def _retire(served: ServedModel) -> None:
    """Lets an unpublished version finish what it queued, then frees it."""
    await served.batcher.drain()
    served.sequences.stop()
