"""KServe v2 on a real in-process server, through the generated v2 stub: every RPC and error.

tritonclient (the stock client) is driven in test_tritonclient.py, in its own process: its
protobuf module and ours define the same `inference.*` symbols and cannot share one.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from lstm_serving.client.client import AsyncLstmClient
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from lstm_serving.protocols.kserve_v2 import build_infer_request, decode_infer_response

RNG = np.random.default_rng(99)


@pytest.fixture
def stub(client: AsyncLstmClient) -> v2_grpc.GRPCInferenceServiceAsyncStub:
    return v2_grpc.GRPCInferenceServiceStub(client.channel)


def infer_request(
    x: np.ndarray,
    lengths: list[int] | None = None,
    outputs: tuple[str, ...] = (),
    raw: bool = True,
    **fields: object,
) -> v2.ModelInferRequest:
    """The protocol's own builder (raw contents), or typed contents (`raw=False`)."""
    request = build_infer_request("seed", x, lengths, outputs)
    request.MergeFrom(v2.ModelInferRequest(**fields))  # type: ignore[arg-type]
    if not raw:
        del request.raw_input_contents[:]
        request.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
        if lengths is not None:
            request.inputs[1].contents.int_contents.extend(lengths)
    return request


async def test_server_and_model_status(stub: v2_grpc.GRPCInferenceServiceAsyncStub) -> None:
    assert (await stub.ServerLive(v2.ServerLiveRequest())).live
    assert (await stub.ServerReady(v2.ServerReadyRequest())).ready
    assert (await stub.ModelReady(v2.ModelReadyRequest(name="seed"))).ready
    assert (await stub.ModelReady(v2.ModelReadyRequest(name="seed", version="1"))).ready
    assert not (await stub.ModelReady(v2.ModelReadyRequest(name="seed", version="2"))).ready
    assert not (await stub.ModelReady(v2.ModelReadyRequest(name="nope"))).ready
    meta = await stub.ServerMetadata(v2.ServerMetadataRequest())
    assert meta.name == "lstm-serving" and meta.version


async def test_model_metadata(stub: v2_grpc.GRPCInferenceServiceAsyncStub) -> None:
    meta = await stub.ModelMetadata(v2.ModelMetadataRequest(name="seed"))
    assert (meta.name, list(meta.versions), meta.platform) == ("seed", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, -1, 2]),
        ("lengths", "INT32", [-1]),
        ("initial_h_0", "FP32", [1, -1, 64]),  # every optional input is listed
        ("initial_c_0", "FP32", [1, -1, 64]),
        ("initial_h_1", "FP32", [1, -1, 32]),
        ("initial_c_1", "FP32", [1, -1, 32]),
    ]
    outputs = {t.name: list(t.shape) for t in meta.outputs}
    assert outputs == {
        "last_hidden": [-1, 32],
        "sequence": [-1, -1, 32],
        "final_h_0": [1, -1, 64],
        "final_c_0": [1, -1, 64],
        "final_h_1": [1, -1, 32],
        "final_c_1": [1, -1, 32],
    }


async def test_infer_matches_lstm_v1_bit_for_bit(
    stub: v2_grpc.GRPCInferenceServiceAsyncStub, client: AsyncLstmClient
) -> None:
    x = RNG.standard_normal((3, 7, 2)).astype(np.float32)
    lengths = [7, 3, 1]
    v1 = await client.predict("seed", x, lengths=lengths, output="both", return_state=True)
    for raw in (True, False):
        response = await stub.ModelInfer(infer_request(x, lengths, raw=raw, id="req-7"))
        assert response.id == "req-7" and response.model_version == "1"
        out = decode_infer_response(response)
        assert list(out) == [
            "last_hidden",
            "sequence",
            "final_h_0",
            "final_c_0",
            "final_h_1",
            "final_c_1",
        ]  # none requested: all, per the spec
        assert v1.last_hidden is not None and v1.sequence is not None
        assert out["last_hidden"].tobytes() == v1.last_hidden.tobytes()
        assert out["sequence"].tobytes() == v1.sequence.tobytes()
        assert out["final_c_1"].tobytes() == v1.states[1][1].tobytes()


async def test_requested_outputs_select_what_is_sent(
    stub: v2_grpc.GRPCInferenceServiceAsyncStub,
) -> None:
    x = RNG.standard_normal((2, 4, 2)).astype(np.float32)
    for outputs in (("last_hidden",), ("sequence",), ("sequence", "final_h_1")):
        response = await stub.ModelInfer(infer_request(x, outputs=outputs))
        assert tuple(o.name for o in response.outputs) == outputs
        assert len(response.raw_output_contents) == len(outputs)
        assert all(o.datatype == "FP32" for o in response.outputs)


def _mutate(name: str) -> v2.ModelInferRequest:
    x = np.zeros((1, 3, 2), np.float32)
    request = infer_request(x, [3])
    match name:
        case "datatype":
            request.inputs[0].datatype = "FP64"
        case "bytes":
            request.raw_input_contents[0] = b"\0" * 20
        case "raw count":
            del request.raw_input_contents[1]
        case "unknown input":
            request.inputs[1].name = "mask"
        case "unknown output":
            request.outputs.add(name="logits")
        case "missing input":
            del request.inputs[0]
            del request.raw_input_contents[0]
        case "features":
            request.inputs[0].shape[2] = 3
        case "lengths range":
            request.raw_input_contents[1] = np.array([4], "<i4").tobytes()
        case "typed count":
            request = infer_request(x, raw=False)
            del request.inputs[0].contents.fp32_contents[0]
        case "shared memory":
            request.inputs[0].parameters["shared_memory_region"].string_param = "r"
        case "nan":
            request.raw_input_contents[0] = np.full(6, np.nan, "<f4").tobytes()
        case "unknown model":
            request.model_name = "nope"
        case "unknown version":
            request.model_version = "9"
        case "bad version":
            request.model_version = "latest"
    return request


V2_ERRORS = [
    ("datatype", grpc.StatusCode.INVALID_ARGUMENT, "datatype 'FP64'; expected FP32"),
    ("bytes", grpc.StatusCode.INVALID_ARGUMENT, "has 20 bytes; shape [1, 3, 2] needs 24"),
    ("raw count", grpc.StatusCode.INVALID_ARGUMENT, "1 entries for 2 inputs"),
    ("unknown input", grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'mask'"),
    ("unknown output", grpc.StatusCode.INVALID_ARGUMENT, "unknown output 'logits'"),
    ("missing input", grpc.StatusCode.INVALID_ARGUMENT, "[batch, time, features]) is missing"),
    ("features", grpc.StatusCode.INVALID_ARGUMENT, "this model takes 2"),
    ("lengths range", grpc.StatusCode.INVALID_ARGUMENT, "lengths[0] is 4"),
    ("typed count", grpc.StatusCode.INVALID_ARGUMENT, "fp32_contents has 5 numbers"),
    ("shared memory", grpc.StatusCode.INVALID_ARGUMENT, "shared memory"),
    ("nan", grpc.StatusCode.INVALID_ARGUMENT, "NaN or Inf"),
    ("unknown model", grpc.StatusCode.NOT_FOUND, "model 'nope' is not loaded"),
    ("unknown version", grpc.StatusCode.NOT_FOUND, "no version 9"),
    ("bad version", grpc.StatusCode.NOT_FOUND, "'latest' does not exist"),
]


@pytest.mark.parametrize(("case", "code", "message"), V2_ERRORS, ids=[e[0] for e in V2_ERRORS])
async def test_infer_errors(
    stub: v2_grpc.GRPCInferenceServiceAsyncStub, case: str, code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelInfer(_mutate(case))
    assert err.value.code() == code, err.value.details()
    assert message in str(err.value.details())
    x = np.ones((1, 3, 2), np.float32)  # the next good request is answered correctly
    good = decode_infer_response(
        await stub.ModelInfer(infer_request(x, [3], outputs=("last_hidden",)))
    )
    assert good["last_hidden"].shape == (1, 32) and np.isfinite(good["last_hidden"]).all()


async def test_stream_pipelines_in_order_and_survives_errors(
    stub: v2_grpc.GRPCInferenceServiceAsyncStub,
) -> None:
    xs = [
        RNG.standard_normal((1, int(RNG.integers(1, 20)), 2)).astype(np.float32) for _ in range(60)
    ]
    requests = [infer_request(x, outputs=("last_hidden",), id=str(i)) for i, x in enumerate(xs)]
    requests[10] = _mutate("features")
    requests[10].id = "10"
    alone = [await stub.ModelInfer(r) for i, r in enumerate(requests) if i != 10]
    responses = [r async for r in stub.ModelStreamInfer(iter(requests))]
    assert [r.infer_response.id for r in responses] == [str(i) for i in range(60)]
    assert responses[10].error_message.startswith("INVALID_ARGUMENT: ")
    ok = [r.infer_response for i, r in enumerate(responses) if i != 10]
    assert all(not r.error_message for i, r in enumerate(responses) if i != 10)
    assert [r.raw_output_contents for r in ok] == [r.raw_output_contents for r in alone]


async def test_triton_extension_rpcs_are_unimplemented(client: AsyncLstmClient) -> None:
    for method in ("ModelConfig", "ModelStatistics", "RepositoryIndex"):
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = client.channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}"
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(b"")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_stream_longer_than_its_read_ahead_bound(
    stub: v2_grpc.GRPCInferenceServiceAsyncStub,
) -> None:
    """1000 requests written at once: the server reads 256 ahead, and all are answered."""
    x = np.ones((1, 2, 2), np.float32)
    requests = [infer_request(x, outputs=("last_hidden",), id=str(i)) for i in range(1000)]
    ids = [r.infer_response.id async for r in stub.ModelStreamInfer(iter(requests))]
    assert ids == [str(i) for i in range(1000)]


VERSIONS = ["²", "\u0661", "\uff11", "00001", "0", "-1", "1" * 4300]  # Arabic-Indic, fullwidth


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: repr(v[:8]))
async def test_version_strings_are_plain_ascii_integers(
    stub: v2_grpc.GRPCInferenceServiceAsyncStub, version: str
) -> None:
    """Not digits to Python alone: Unicode digits, leading zeros, 4,300 digits are no version
    here; NOT_FOUND (ready=false) on every RPC that takes one, never INTERNAL."""
    ready = await stub.ModelReady(v2.ModelReadyRequest(name="seed", version=version))
    assert ready.ready is False
    for call in (
        stub.ModelMetadata(v2.ModelMetadataRequest(name="seed", version=version)),
        stub.ModelInfer(infer_request(np.zeros((1, 2, 2), np.float32), model_version=version)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "versions are integers >= 1" in str(err.value.details())
    request = infer_request(np.zeros((1, 2, 2), np.float32), model_version=version)
    (answer,) = [a async for a in stub.ModelStreamInfer(iter([request]))]
    assert answer.error_message.startswith("NOT_FOUND")
