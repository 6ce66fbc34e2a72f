"""What one careless or hostile client can do to everyone else, bounded: each test is short,
abuses a real server, and checks the abuse is refused precisely and others still served."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

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
