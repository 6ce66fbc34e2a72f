"""What one careless or hostile client can do to everyone else, bounded: each test is short,
abuses a real server, and checks the abuse is refused precisely and others still served."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from lstm_serving.proto.v1 import lstm_pb2 as pb
from lstm_serving.proto.v1 import lstm_pb2_grpc as pb_grpc
from tests.processes import free_port, start, stop, wait_serving

UNDECODABLE = b"\xff\xff\xff"  # a field tag with no end: no protobuf message parses it


def test_undecodable_bodies_are_invalid_argument_and_logged_at_a_rate_limit(
    seed_repository: Path,
) -> None:
    """Before: UNKNOWN "Unexpected DecodeError" and a 700-byte traceback per request (no
    token needed), and ModelStreamInfer hung until the deadline."""
    port = free_port()
    process = start(seed_repository, port)
    try:
        wait_serving(process, port)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method in (
                "/lstm.v1.LstmService/Predict",
                "/inference.GRPCInferenceService/ModelInfer",
            ):
                unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
                for _ in range(200):
                    with pytest.raises(grpc.RpcError) as refused:
                        unary(UNDECODABLE, timeout=10)
                    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert "is not a valid" in str(refused.value.details())
            stream: grpc.StreamStreamMultiCallable[bytes, bytes]
            stream = channel.stream_stream("/lstm.v1.LstmService/PredictStream")
            with pytest.raises(grpc.RpcError) as refused:
                list(stream(iter([UNDECODABLE]), timeout=10))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            v2_stream: grpc.StreamStreamMultiCallable[bytes, bytes]
            v2_stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
            answers = list(v2_stream(iter([UNDECODABLE, UNDECODABLE]), timeout=10))
            assert len(answers) == 2
            assert all(b"INVALID_ARGUMENT: the request body" in a for a in answers), answers
    finally:
        code, err = stop(process)
    assert code == 0, err
    assert "Traceback" not in err, err
    # one line per service in the 10 s window, each counting what it stood for
    assert 1 <= err.count("is not a valid") <= 2, err


def _rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))


def _zeros(batch: int, steps: int, output: pb.Output.ValueType) -> pb.PredictRequest:
    tensor = pb.Tensor(shape=[batch, steps, 2], data=bytes(batch * steps * 8))
    return pb.PredictRequest(model="seed", input=tensor, output=output)


def test_large_requests_are_bounded_and_their_memory_returns(seed_repository: Path) -> None:
    """Before: 1024 x 2047 zeros (16 KB gzipped) took 8.4 s of CPU and left RSS at 2.8 GB;
    asking for the sequence ran 20 s, failed to send, and was counted OK. Now the first two are
    refused before decoding (--max-request-steps, --max-message-bytes) and the largest allowed
    request leaves RSS where it was: ONNX Runtime's arena held ~640 MB after it here."""
    port = free_port()
    process = start(seed_repository, port)
    try:
        wait_serving(process, port)
        options = [("grpc.max_send_message_length", 64 << 20)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            predict = pb_grpc.LstmServiceStub(channel).Predict
            for _ in range(20):
                predict(_zeros(1, 10, pb.LAST_HIDDEN), timeout=10)
            before = _rss_mib(process.pid)
            for request, flag in (
                (_zeros(1024, 2047, pb.LAST_HIDDEN), "--max-request-steps"),
                (_zeros(128, 2048, pb.SEQUENCE), "--max-message-bytes"),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    predict(request, compression=grpc.Compression.Gzip, timeout=30)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert flag in str(refused.value.details())
            largest = _zeros(128, 2048, pb.LAST_HIDDEN)  # 262,144 sequence-steps: the default
            for _ in range(3):
                answer = predict(largest, compression=grpc.Compression.Gzip, timeout=60)
                assert list(answer.last_hidden.shape) == [128, 32]
            after = _rss_mib(process.pid)
            assert after - before < 200, (before, after)
    finally:
        code, err = stop(process)
    assert code == 0, err
