"""protobuf <-> numpy: round trips and every validation message."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_serving.core.requests import InferResult, OutputSet
from lstm_serving.errors import InvalidArgument
from lstm_serving.proto.v1 import lstm_pb2 as pb
from lstm_serving.protocols import lstm_v1 as codec
from tests.helpers import architecture

ARCH = architecture(2, [4, 3])


def test_array_round_trip_is_exact_little_endian() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 2)).astype(np.float32)
    tensor = codec.fill_tensor(pb.Tensor(), x)
    assert list(tensor.shape) == [2, 3, 2] and len(tensor.data) == 48 and not tensor.values
    assert tensor.data == x.astype("<f4").tobytes()
    np.testing.assert_array_equal(codec.tensor_to_array(tensor, "t"), x)
    big_endian = x.astype(">f4")
    assert codec.fill_tensor(pb.Tensor(), big_endian).data == tensor.data


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


def test_decode_predict_maps_outputs_and_states() -> None:
    x = pb.Tensor(shape=[1, 2, 2], values=[0.0] * 4)
    plain = codec.decode_predict(pb.PredictRequest(model="m", input=x), deadline=None)
    assert plain.outputs is OutputSet.DEFAULT and not plain.with_states and plain.lengths is None
    head = codec.decode_predict(
        pb.PredictRequest(input=x, output=pb.SEQUENCE, return_prediction=True), deadline=None
    )
    assert head.outputs == ("sequence",) and head.with_prediction
    both = codec.decode_predict(
        pb.PredictRequest(
            input=x, output=pb.LAST_HIDDEN_AND_SEQUENCE, return_state=True, lengths=[1]
        ),
        deadline=None,
    )
    assert both.outputs == ("last_hidden", "sequence") and both.with_states
    assert both.lengths is not None and both.lengths.tolist() == [1]
    with pytest.raises(InvalidArgument, match="input is not set"):
        codec.decode_predict(pb.PredictRequest(model="m"), deadline=None)
    with pytest.raises(InvalidArgument, match="not a known Output value"):
        codec.decode_predict(pb.PredictRequest(input=x, output=42), deadline=None)  # type: ignore[arg-type]


def test_encode_prediction_fills_only_present_outputs() -> None:
    h = np.ones((1, 2, 4), np.float32)
    outputs = {
        "sequence": np.zeros((2, 3, 3), np.float32),
        "final_h_0": h,
        "final_c_0": h,
        "final_h_1": h[..., :3],
        "final_c_1": h[..., :3],
    }
    response = codec.encode_prediction(InferResult("m", 4, ARCH, outputs))
    assert not response.HasField("last_hidden") and list(response.sequence.shape) == [2, 3, 3]
    assert [s.layer for s in response.state] == [0, 1]
    assert list(response.state[1].h.shape) == [1, 2, 3]
