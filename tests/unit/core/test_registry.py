"""The registry on its own: what resolves, what is refused and how the refusal reads."""

from __future__ import annotations

import pytest

from lstm_serving.core.batching import Batcher
from lstm_serving.core.registry import Registry, ServedModel
from lstm_serving.core.runtime import Model
from lstm_serving.core.sequences import SequenceStore
from lstm_serving.errors import NotFound, Unavailable
from tests.helpers import SEED_REPOSITORY

SEED_FILE = SEED_REPOSITORY / "seed/1/model.onnx"


def _served(name: str, version: int) -> ServedModel:
    model = Model(SEED_FILE, name, version)
    batcher = Batcher(
        model.run, name=f"{name}:{version}", max_batch_size=8, max_queue_delay_s=0.0,
        max_queue_size=8,
    )  # fmt: skip
    return ServedModel(model, batcher, SequenceStore(f"{name}:{version}", 10, 60.0))


@pytest.fixture(scope="module")
def registry() -> Registry:
    registry = Registry()
    for name, version in (("seed", 3), ("seed", 1), ("other", 2)):
        registry.add(_served(name, version))
    return registry


def test_nothing_resolves_until_the_server_is_ready(registry: Registry) -> None:
    registry.ready = False
    with pytest.raises(Unavailable, match="starting or stopping"):
        registry.resolve("seed")
    assert registry.served("seed", 1).model.version == 1  # loading code reaches it all the same
    registry.ready = True


def test_version_zero_is_the_newest_and_versions_are_listed_sorted(registry: Registry) -> None:
    registry.ready = True
    assert registry.resolve("seed").model.version == 3
    assert registry.resolve("seed", 1).model.version == 1
    assert registry.versions() == {"other": [2], "seed": [1, 3]}
    assert registry.loaded() == {("seed", 1), ("seed", 3), ("other", 2)}


def test_refusals_name_what_is_loaded(registry: Registry) -> None:
    registry.ready = True
    with pytest.raises(NotFound, match=r"'nope' is not loaded \(loaded models: other, seed\)"):
        registry.resolve("nope")
    with pytest.raises(NotFound, match=r"no version 2 \(loaded versions: 1, 3\)"):
        registry.resolve("seed", 2)


def test_a_removed_version_is_unpublished_at_once() -> None:
    registry = Registry()
    registry.add(_served("m", 1))
    registry.add(_served("m", 2))
    registry.ready = True
    assert registry.remove("m", 2).model.version == 2
    assert registry.resolve("m").model.version == 1
    registry.remove("m", 1)
    assert not registry.has("m") and registry.versions() == {}
