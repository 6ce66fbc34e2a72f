"""protobuf <-> numpy: round trips and every validation message."""

from __future__ import annotations

import numpy as np
import pytest

from lstm.v1 import lstm_pb2 as pb
from service import codec
from service.architecture import Architecture
from service.errors import InvalidArgument

ARCH = Architecture.build(2, [4, 3], False, 17)


def test_array_round_trip_is_exact_little_endian() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 2)).astype(np.float32)
    tensor = codec.array_to_tensor(x)
    assert list(tensor.shape) == [2, 3, 2] and len(tensor.data) == 48 and not tensor.values
    assert tensor.data == x.astype("<f4").tobytes()
    np.testing.assert_array_equal(codec.tensor_to_array(tensor, "t"), x)
    big_endian = x.astype(">f4")
    assert codec.array_to_tensor(big_endian).data == tensor.data


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (pb.Tensor(shape=[1, 2, 2], data=b"\0" * 15), "has 15 bytes; shape [1, 2, 2] needs 16"),
        (pb.Tensor(shape=[1, 2, 2], values=[1.0] * 3), "has 3 numbers; shape [1, 2, 2] needs 4"),
        (pb.Tensor(shape=[1, 1, 2], data=b"\0" * 8, values=[1, 2]), "not both"),
        (pb.Tensor(shape=[1, 1, 2]), "neither data nor values"),
        (pb.Tensor(shape=[1, -1, 2], values=[1.0]), "negative dimension"),
        (pb.Tensor(shape=[2**40, 2**40, 2], data=b"\0" * 8), "has a dimension over"),
    ],
)
def test_tensor_mismatches(tensor: pb.Tensor, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("]", r"\]")):
        codec.tensor_to_array(tensor, "input")


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([1, 2], "rank 2; expected \\[batch, time, 2\\]"),
        ([0, 2, 2], "empty batch"),
        ([1, 0, 2], "no time steps"),
        ([1, 2, 3], "3 features; this model takes 2"),
        ([1, 11, 2], "11 time steps; the limit is 10"),
        ([4, 2, 2], "4 sequences; the limit is 3 per request"),
    ],
)
def test_input_shape_checks(shape: list[int], message: str) -> None:
    tensor = pb.Tensor(shape=shape, values=[0.0] * int(np.prod(shape)))
    with pytest.raises(InvalidArgument, match=message):
        codec.decode_input(tensor, ARCH, max_sequence_length=10, max_sequences=3)


def test_non_finite_input_names_the_index() -> None:
    values = [0.0] * 8
    values[5] = float("-inf")
    with pytest.raises(InvalidArgument, match=r"first at index \[1, 0, 1\]"):
        codec.decode_input(pb.Tensor(shape=[2, 2, 2], values=values), ARCH, 10, 3)


def test_lengths() -> None:
    np.testing.assert_array_equal(codec.decode_lengths([], 3, 7), [7, 7, 7])
    assert codec.decode_lengths([1, 7], 2, 7).dtype == np.int32
    with pytest.raises(InvalidArgument, match=r"lengths\[1\] is 8; each length must be in 1..7"):
        codec.decode_lengths([1, 8], 2, 7)
    with pytest.raises(InvalidArgument, match=r"lengths\[0\] is -1"):
        codec.decode_lengths([-1], 1, 7)
    with pytest.raises(InvalidArgument, match="3 entries for a batch of 2"):
        codec.decode_lengths([1, 1, 1], 2, 7)


def test_requested_outputs() -> None:
    assert codec.requested_outputs(pb.OUTPUT_UNSPECIFIED, False, 2) == ("last_hidden",)
    assert codec.requested_outputs(pb.LAST_HIDDEN_AND_SEQUENCE, False, 2) == (
        "last_hidden",
        "sequence",
    )
    assert codec.requested_outputs(pb.SEQUENCE, True, 2) == (
        "sequence",
        "final_h_0",
        "final_c_0",
        "final_h_1",
        "final_c_1",
    )
    with pytest.raises(InvalidArgument):
        codec.requested_outputs(42, False, 2)


def test_encode_prediction_fills_only_present_outputs() -> None:
    h = np.ones((1, 2, 4), np.float32)
    response = codec.encode_prediction(
        {
            "sequence": np.zeros((2, 3, 3), np.float32),
            "final_h_0": h,
            "final_c_0": h,
            "final_h_1": h[..., :3],
            "final_c_1": h[..., :3],
        },
        "m",
        4,
        layers=2,
    )
    assert not response.HasField("last_hidden") and list(response.sequence.shape) == [2, 3, 3]
    assert [s.layer for s in response.state] == [0, 1]
    assert list(response.state[1].h.shape) == [1, 2, 3]
