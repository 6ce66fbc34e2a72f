"""Property-based fuzzing (hypothesis): of the decode/validate path, then of live RPCs.

Whatever a caller sends, the answer is a result or a client error (INVALID_ARGUMENT,
NOT_FOUND, ...): never INTERNAL or UNKNOWN, never a crash.
Over 250 lines: the strategies and properties of every decode path, side by side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstm_serving.contract import EmbeddingSpec
from lstm_serving.core.validation import Limits
from lstm_serving.errors import InvalidArgument, NotFound
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from lstm_serving.proto.v1 import lstm_pb2 as pb
from lstm_serving.proto.v1 import lstm_pb2_grpc as pb_grpc
from lstm_serving.protocols import kserve_v2 as kserve_codec
from lstm_serving.protocols import lstm_v1 as codec
from tests.helpers import architecture, free_port, start, stop, validated, wait_serving

ARCH = architecture(2, [4, 3])
dims = st.one_of(st.integers(-2, 6), st.sampled_from([0, 2**31, 2**62]))
shapes = st.lists(dims, max_size=4)
floats = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def tensors(draw: st.DrawFn) -> pb.Tensor:
    shape = draw(shapes)
    tensor = pb.Tensor(shape=shape)
    kind = draw(st.sampled_from(["data", "values", "both", "none", "exact"]))
    count = int(np.prod([max(d, 0) for d in shape])) if shape and max(shape) < 50 else 1
    if kind == "exact" and count < 200:
        tensor.data = np.asarray(
            draw(st.lists(floats, min_size=count, max_size=count)), "<f4"
        ).tobytes()
    if kind in ("data", "both"):
        tensor.data = draw(st.binary(max_size=96))
    if kind in ("values", "both"):
        tensor.values.extend(draw(st.lists(floats, max_size=24)))
    return tensor


@st.composite
def predict_requests(draw: st.DrawFn) -> pb.PredictRequest:
    request = pb.PredictRequest(
        model=draw(st.sampled_from(["seed", "seed", "", "nope", "séed\x00"])),
        version=draw(st.sampled_from([0, 0, 1, 2, -1, 2**62])),
        lengths=draw(st.lists(st.integers(-3, 12), max_size=5)),
        output=draw(st.sampled_from([0, 1, 2, 3, 7])),  # type: ignore[arg-type]
        return_state=draw(st.booleans()),
    )
    if draw(st.booleans()):
        request.input.CopyFrom(draw(tensors()))
    for _ in range(draw(st.integers(0, 3))):  # initial states, right or wrong
        request.initial_state.add(
            layer=draw(st.integers(-1, 3)), h=draw(tensors()), c=draw(tensors())
        )
    if draw(st.booleans()):  # a sequence step: ids, flags, repeats in any order
        which = draw(st.sampled_from(["number", "text", "none"]))
        if which == "number":
            request.sequence.number = draw(st.sampled_from([0, 1, 2, 2**64 - 1]))
        elif which == "text":
            request.sequence.text = draw(st.sampled_from(["", "a", "é\x00", "x" * 300]))
        else:
            request.sequence.SetInParent()
        request.sequence.start = draw(st.booleans())
        request.sequence.end = draw(st.booleans())
    return request


@st.composite
def infer_requests(draw: st.DrawFn) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(
        model_name=draw(st.sampled_from(["seed", "seed", "nope"])),
        model_version=draw(st.sampled_from(["", "1", "0", "x", "-1"])),
        id=draw(st.text(max_size=5)),
    )
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(
            name=draw(
                st.sampled_from(["input", "lengths", "mask", "", "initial_h_0", "initial_c_1"])
            ),
            datatype=draw(st.sampled_from(["FP32", "INT32", "FP64", "BYTES", ""])),
            shape=draw(shapes),
        )
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=96)))
        else:
            tensor.contents.fp32_contents.extend(draw(st.lists(floats, max_size=24)))
            tensor.contents.int_contents.extend(draw(st.lists(st.integers(-5, 20), max_size=6)))
    for name in draw(
        st.lists(st.sampled_from(["last_hidden", "sequence", "final_c_1", "x"]), max_size=3)
    ):
        request.outputs.add(name=name)
    for key in draw(st.lists(st.sampled_from(SEQUENCE_PARAMETERS), max_size=3)):
        parameter = request.parameters[key]
        kind = draw(st.sampled_from(["int64_param", "string_param", "bool_param", "double_param"]))
        value = {"int64_param": 0, "string_param": "", "bool_param": False, "double_param": 0.0}
        setattr(parameter, kind, draw(st.sampled_from([value[kind], *PARAMETER_VALUES[kind]])))
    return request


SEQUENCE_PARAMETERS = ["sequence_id", "sequence_start", "sequence_end"]
PARAMETER_VALUES: dict[str, list[object]] = {
    "int64_param": [1, -1, 2**63 - 1],
    "string_param": ["s", "é" * 100],
    "bool_param": [True],
    "double_param": [1.5],
}


@settings(max_examples=3000, deadline=None)
@given(predict_requests())
def test_decoding_lstm_v1_requests_never_fails_unexpectedly(request: pb.PredictRequest) -> None:
    try:
        checked = validated(codec.decode_predict(request, None), ARCH, Limits(10, 5))
        inputs, lengths = checked.inputs, checked.lengths
    except InvalidArgument:
        return
    assert inputs.shape[0] <= 5 and inputs.shape[1] <= 10 and inputs.shape[2] == 2
    assert np.isfinite(inputs).all() and inputs.dtype == np.float32
    assert lengths.min() >= 1 and lengths.max() <= inputs.shape[1]


@settings(max_examples=3000, deadline=None)
@given(infer_requests())
def test_decoding_v2_requests_never_fails_unexpectedly(request: v2.ModelInferRequest) -> None:
    try:
        call = kserve_codec.decode_infer_request(request, None)
        checked = validated(call, ARCH, Limits(10, 5))
        inputs, lengths = checked.inputs, checked.lengths
    except (InvalidArgument, NotFound):
        return
    assert inputs.shape[2] == 2 and np.isfinite(inputs).all()
    assert len(lengths) == inputs.shape[0]


TEXT = dataclasses.replace(architecture(8, [4, 3]), embedding=EmbeddingSpec(20, 8, 0, True))
ids = st.integers(-(2**63), 2**63 - 1) | st.integers(-2, 22)


@st.composite
def token_requests(draw: st.DrawFn) -> pb.PredictRequest:
    """Token ids for a text model: any shape, raw bytes or values or both, any id, and
    sometimes a float input beside or instead of them."""
    request = pb.PredictRequest(
        model="text", lengths=draw(st.lists(st.integers(-3, 12), max_size=5))
    )
    shape = draw(shapes)
    request.tokens.shape.extend(shape)
    kind = draw(st.sampled_from(["data", "values", "both", "exact", "float input"]))
    if kind in ("data", "both"):
        request.tokens.data = draw(st.binary(max_size=96))
    if kind in ("values", "both"):
        request.tokens.values.extend(draw(st.lists(ids, max_size=24)))
    count = int(np.prod([max(d, 0) for d in shape])) if shape and max(shape) < 50 else 1
    if kind == "exact" and count < 200:
        request.tokens.values.extend(draw(st.lists(ids, min_size=count, max_size=count)))
    if kind == "float input":
        request.input.CopyFrom(draw(tensors()))
    return request


@settings(max_examples=2000, deadline=None)
@given(token_requests())
def test_decoding_token_requests_never_fails_unexpectedly(request: pb.PredictRequest) -> None:
    try:
        checked = validated(codec.decode_predict(request, None), TEXT, Limits(10, 5))
    except InvalidArgument:
        return
    inputs, lengths = checked.inputs, checked.lengths
    assert inputs.ndim == 2 and inputs.dtype == np.int64 and inputs.shape[0] <= 5
    assert ((inputs >= 0) & (inputs < 20)).all()
    assert lengths.min() >= 1 and lengths.max() <= inputs.shape[1]


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from(["INT64", "INT32", "FP32", "BOOL"]),
    shapes,
    st.binary(max_size=96),
)
def test_decoding_v2_token_requests_never_fails_unexpectedly(
    datatype: str, shape: list[int], raw: bytes
) -> None:
    request = v2.ModelInferRequest(model_name="text")
    request.inputs.add(name="input", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    try:
        checked = validated(kserve_codec.decode_infer_request(request, None), TEXT, Limits(10, 5))
    except (InvalidArgument, NotFound):
        return
    assert checked.inputs.ndim == 2 and ((checked.inputs >= 0) & (checked.inputs < 20)).all()


@pytest.fixture(scope="module")
def live(seed_repository: Path) -> Iterator[grpc.Channel]:
    port = free_port()
    process = start(
        seed_repository, port, "--max-sequence-length", "10", "--max-request-sequences", "5"
    )
    try:
        wait_serving(process, port)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        code, err = stop(process)
        assert code == 0, err
        assert "Traceback" not in err, err


CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,  # a START of a sequence a previous example left open
}


@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=predict_requests())
def test_live_lstm_v1_rpcs(live: grpc.Channel, request: pb.PredictRequest) -> None:
    try:
        pb_grpc.LstmServiceStub(live).Predict(request, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in CLIENT_ERRORS, (exc.code(), exc.details())


@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=infer_requests())
def test_live_v2_rpcs(live: grpc.Channel, request: v2.ModelInferRequest) -> None:
    try:
        v2_grpc.GRPCInferenceServiceStub(live).ModelInfer(request, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in CLIENT_ERRORS, (exc.code(), exc.details())


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(requests=st.lists(predict_requests(), min_size=1, max_size=6))
def test_live_streams(live: grpc.Channel, requests: list[pb.PredictRequest]) -> None:
    """PredictStream answers in order until a message fails, which ends the stream with a
    client error; ModelStreamInfer answers every message, errors in error_message."""
    answered = 0
    try:
        for _ in pb_grpc.LstmServiceStub(live).PredictStream(iter(requests), timeout=10):
            answered += 1
    except grpc.RpcError as exc:
        assert exc.code() in CLIENT_ERRORS, (exc.code(), exc.details())
        assert answered < len(requests)
    else:
        assert answered == len(requests)
    infer = [v2.ModelInferRequest(model_name=r.model, id=str(i)) for i, r in enumerate(requests)]
    for message in infer:
        message.inputs.add(name="input", datatype="FP32", shape=[1, 1, 2])
        message.raw_input_contents.append(b"\0" * 8)
        message.parameters["sequence_id"].int64_param = 77
    answers = list(v2_grpc.GRPCInferenceServiceStub(live).ModelStreamInfer(iter(infer), timeout=10))
    assert [a.infer_response.id for a in answers] == [m.id for m in infer]
    for answer in answers:
        code = answer.error_message.split(":", 1)[0]
        assert not answer.error_message or grpc.StatusCode[code] in CLIENT_ERRORS, answer


def test_server_still_answers_after_the_fuzzing(live: grpc.Channel) -> None:
    request = pb.PredictRequest(model="seed", input=pb.Tensor(shape=[1, 2, 2], values=[1] * 4))
    response = pb_grpc.LstmServiceStub(live).Predict(request, timeout=10)
    assert list(response.last_hidden.shape) == [1, 32]


RAW_METHODS = (
    "/lstm.v1.LstmService/Predict",
    "/lstm.v1.LstmService/DescribeModel",
    "/inference.GRPCInferenceService/ModelInfer",
    "/inference.GRPCInferenceService/ModelMetadata",
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(method=st.sampled_from(RAW_METHODS), body=st.binary(max_size=64))
def test_live_raw_bodies(live: grpc.Channel, method: str, body: bytes) -> None:
    """Any bytes as a request body: an answer or a client error, never UNKNOWN or INTERNAL
    (the fixture checks the log holds no traceback)."""
    try:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = live.unary_unary(method)
        call(body, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in CLIENT_ERRORS, (exc.code(), exc.details())
