"""What every request is checked for, whatever protocol it came by: every message."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_serving.core.requests import InferRequest, OutputSet
from lstm_serving.core.tensors import Encoded
from lstm_serving.core.validation import Limits, check_lengths
from lstm_serving.errors import InvalidArgument
from tests.helpers import architecture, validated

ARCH = architecture(2, [4, 3])


def request(
    inputs: np.ndarray,
    outputs: tuple[str, ...] | OutputSet = ("last_hidden",),
    with_states: bool = False,
) -> InferRequest:
    return InferRequest("m", 0, Encoded.of(inputs), None, outputs, with_states)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([1, 2], "rank 2; this model takes float32 features \\[batch, time, 2\\], not token ids"),
        ([0, 2, 2], "empty batch"),
        ([1, 0, 2], "no time steps"),
        ([1, 2, 3], "3 features; this model takes 2"),
        ([1, 11, 2], "11 time steps; the limit is 10"),
        ([4, 2, 2], "4 sequences; the limit is 3 per request"),
    ],
)
def test_input_shape_checks(shape: list[int], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validated(request(np.zeros(shape, np.float32)), ARCH, Limits(10, 3))


def test_non_finite_input_names_the_index() -> None:
    x = np.zeros((2, 2, 2), np.float32)
    x[1, 0, 1] = -np.inf
    with pytest.raises(InvalidArgument, match=r"first at index \[1, 0, 1\]"):
        validated(request(x), ARCH, Limits(10, 3))


def test_lengths() -> None:
    np.testing.assert_array_equal(check_lengths(None, 3, 7), [7, 7, 7])
    assert check_lengths(np.array([1, 7]), 2, 7).dtype == np.int32
    with pytest.raises(InvalidArgument, match=r"lengths\[1\] is 8; each length must be in 1..7"):
        check_lengths(np.array([1, 8]), 2, 7)
    with pytest.raises(InvalidArgument, match=r"lengths\[0\] is -1"):
        check_lengths(np.array([-1]), 1, 7)
    with pytest.raises(InvalidArgument, match="3 entries for a batch of 2"):
        check_lengths(np.array([1, 1, 1]), 2, 7)
    with pytest.raises(InvalidArgument, match="expected \\[batch\\]"):
        check_lengths(np.ones((2, 1)), 2, 7)


def test_outputs_default_states_and_unknown_names() -> None:
    x = np.zeros((1, 2, 2), np.float32)
    every = validated(request(x, outputs=OutputSet.ALL), ARCH, Limits(10, 3)).outputs
    assert every == tuple(ARCH.output_shapes)
    with_states = validated(
        request(x, outputs=("sequence",), with_states=True), ARCH, Limits(10, 3)
    ).outputs
    assert with_states == ("sequence", "final_h_0", "final_c_0", "final_h_1", "final_c_1")
    with pytest.raises(InvalidArgument, match="unknown output 'x'"):
        validated(request(x, outputs=("x",)), ARCH, Limits(10, 3))
    with pytest.raises(InvalidArgument, match="requested twice"):
        validated(request(x, outputs=("sequence", "sequence")), ARCH, Limits(10, 3))
