"""The data plane on its own, no protocol and no gRPC: resolve, validate, submit, answer,
against the real seed model on ONNX Runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from lstm_serving.core.batching import Batcher
from lstm_serving.core.dataplane import DataPlane
from lstm_serving.core.registry import Registry, ServedModel
from lstm_serving.core.requests import InferRequest, OutputSet, SequenceStep
from lstm_serving.core.runtime import Model
from lstm_serving.core.sequences import SequenceStore
from lstm_serving.core.settings import Settings
from lstm_serving.core.tensors import Encoded
from lstm_serving.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from tests.helpers import SEED_REPOSITORY

RNG = np.random.default_rng(11)


@pytest.fixture
async def dataplane() -> AsyncIterator[DataPlane]:
    model = Model(SEED_REPOSITORY / "seed/1/model.onnx", "seed", 1)
    batcher = Batcher(
        model.run, name="seed:1", max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=2
    )
    registry = Registry()
    registry.add(ServedModel(model, batcher, SequenceStore("seed:1", 4, 60.0)))
    batcher.start()
    registry.ready = True
    yield DataPlane(registry, Settings(max_queue_size=2))
    await registry.stop()


def _request(x: np.ndarray, **fields: object) -> InferRequest:
    return InferRequest("seed", 0, Encoded.of(x), None, OutputSet.DEFAULT, **fields)  # type: ignore[arg-type]


async def test_an_answer_is_what_the_model_computes_alone(dataplane: DataPlane) -> None:
    x = RNG.standard_normal((3, 6, 2)).astype(np.float32)
    result = await dataplane.infer(_request(x))
    assert (result.model, result.version, list(result.outputs)) == ("seed", 1, ["last_hidden"])
    alone = dataplane.model("seed").run(x, np.full(3, 6, np.int32), ["last_hidden"])
    np.testing.assert_array_equal(result.outputs["last_hidden"], alone["last_hidden"])


async def test_chunks_of_a_server_held_sequence_equal_the_whole_run(dataplane: DataPlane) -> None:
    x = RNG.standard_normal((1, 9, 2)).astype(np.float32)
    whole = await dataplane.infer(_request(x))
    first = SequenceStep("s", start=True)
    await dataplane.infer(_request(x[:, :4], sequence=first))
    last = await dataplane.infer(_request(x[:, 4:], sequence=SequenceStep("s", end=True)))
    assert np.abs(last.outputs["last_hidden"] - whole.outputs["last_hidden"]).max() < 1e-6


async def test_refusals_say_what_and_why(dataplane: DataPlane) -> None:
    x = np.ones((1, 3, 2), np.float32)
    with pytest.raises(NotFound, match="'nope' is not loaded"):
        await dataplane.infer(InferRequest("nope", 0, Encoded.of(x), None, OutputSet.DEFAULT))
    with pytest.raises(InvalidArgument, match="shape\\[2\\] is 5 features; this model takes 2"):
        await dataplane.infer(_request(np.ones((1, 3, 5), np.float32)))
    dataplane.registry.ready = False
    with pytest.raises(Unavailable):
        await dataplane.infer(_request(x))
    dataplane.registry.ready = True


async def test_a_request_reserves_its_bytes_before_its_contents_are_read(
    dataplane: DataPlane,
) -> None:
    reserved: list[tuple[int, int]] = []
    x = np.ones((2, 3, 2), np.float32)
    await dataplane.infer(_request(x), lambda inputs, answer: reserved.append((inputs, answer)))
    assert reserved == [(x.nbytes, 2 * 32 * 4)]  # last_hidden: 32 floats per sequence

    def refuse(inputs: int, answer: int) -> None:
        raise ResourceExhausted("over budget")

    nan = np.full((1, 3, 2), np.nan, np.float32)  # refused unread: the NaN is never seen
    with pytest.raises(ResourceExhausted, match="over budget"):
        await dataplane.infer(_request(nan), refuse)
