"""The KServe v2 codec on its own: the caller's builder and decoder against the server's
decoder and encoder, and the refusals a malformed request gets (no server, no grpc)."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_serving.core.requests import Caller, InferResult, OutputSet, SequenceStep
from lstm_serving.errors import InvalidArgument, NotFound
from lstm_serving.protocols import kserve_v2
from tests.helpers import architecture

RNG = np.random.default_rng(7)
X = RNG.standard_normal((2, 3, 2)).astype(np.float32)


def test_a_built_request_decodes_to_what_was_built() -> None:
    state = RNG.standard_normal((1, 2, 4)).astype(np.float32)
    request = kserve_v2.build_infer_request(
        "seed",
        X,
        [3, 1],
        ["last_hidden"],
        version="4",
        request_id="r",
        initial_states={"initial_h_0": state},
        sequence=SequenceStep("s-1", start=True),
    )
    decoded = kserve_v2.decode_infer_request(request, deadline=None, caller=Caller("o", "o"))
    assert (decoded.model, decoded.version, decoded.outputs) == ("seed", 4, ("last_hidden",))
    assert decoded.inputs.shape == X.shape
    np.testing.assert_array_equal(decoded.inputs.decode(), X)
    assert decoded.lengths is not None and decoded.lengths.tolist() == [3, 1]
    assert decoded.initial_states is not None
    np.testing.assert_array_equal(decoded.initial_states["initial_h_0"], state)
    assert decoded.sequence == SequenceStep("s-1", start=True, end=False)
    assert decoded.caller.owner == "o"


def test_no_outputs_asked_means_all_and_an_integer_sequence_id_stays_one() -> None:
    request = kserve_v2.build_infer_request("seed", X, sequence=SequenceStep(9, end=True))
    decoded = kserve_v2.decode_infer_request(request, deadline=None)
    assert decoded.outputs is OutputSet.ALL and decoded.lengths is None
    assert decoded.sequence == SequenceStep(9, start=False, end=True)


def test_an_encoded_response_decodes_to_the_same_arrays_in_order() -> None:
    outputs = {
        "sequence": RNG.standard_normal((2, 3, 4)).astype(np.float32),
        "last_hidden": RNG.standard_normal((2, 4)).astype(np.float32),
    }
    result = InferResult("seed", 1, architecture(2, [4]), outputs)
    response = kserve_v2.encode_infer_response(result, "id-1")
    assert (response.id, response.model_version) == ("id-1", "1")
    decoded = kserve_v2.decode_infer_response(response)
    assert list(decoded) == ["sequence", "last_hidden"]
    for name, array in outputs.items():
        np.testing.assert_array_equal(decoded[name], array)


def test_typed_contents_decode_as_raw_ones_do() -> None:
    request = kserve_v2.build_infer_request("seed", X, [3, 2])
    del request.raw_input_contents[:]
    request.inputs[0].contents.fp32_contents.extend(X.ravel().tolist())
    request.inputs[1].contents.int_contents.extend([3, 2])
    decoded = kserve_v2.decode_infer_request(request, deadline=None)
    np.testing.assert_array_equal(decoded.inputs.decode(), X)
    assert decoded.lengths is not None and decoded.lengths.tolist() == [3, 2]


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (
            lambda r: r.inputs[0].__setattr__("datatype", "FP64"),
            "has datatype 'FP64'; expected FP32",
        ),
        (lambda r: r.inputs[0].__setattr__("name", "x"), "unknown input 'x'"),
        (lambda r: r.raw_input_contents.append(b""), "raw_input_contents has 3 entries for 2"),
        (lambda r: r.inputs[1].__setattr__("name", "input"), "input 'input' is given twice"),
        (
            lambda r: r.parameters["sequence_start"].__setattr__("bool_param", True),
            "need a sequence_id",
        ),
    ],
    ids=["dtype", "name", "raw-count", "twice", "start-without-id"],
)
def test_malformed_requests_are_refused_by_name(spoil: object, message: str) -> None:
    request = kserve_v2.build_infer_request("seed", X, [3, 3])
    spoil(request)  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match=message):
        kserve_v2.decode_infer_request(request, deadline=None)


def test_contents_that_do_not_fit_the_shape_are_refused_when_decoded() -> None:
    request = kserve_v2.build_infer_request("seed", X)
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    decoded = kserve_v2.decode_infer_request(request, deadline=None)
    with pytest.raises(
        InvalidArgument, match="raw contents has 44 bytes; shape \\[2, 3, 2\\] needs 48"
    ):
        decoded.inputs.decode()


@pytest.mark.parametrize("version", ["01", "1.0", "latest", "\u0661", "9" * 19])
def test_versions_are_plain_integers(version: str) -> None:
    with pytest.raises(NotFound, match="versions are integers"):
        kserve_v2.parse_version(version)
    assert kserve_v2.parse_version("") == 0 and kserve_v2.parse_version("12") == 12
