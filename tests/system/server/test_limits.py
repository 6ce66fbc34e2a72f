"""Configurable limits: message size both ways, sequences per request, sequence length, idle
connections."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from lstm_serving.client.client import AsyncLstmClient
from tests.helpers import free_port, start, start_server, stop, wait_serving


async def test_limits(seed_repository: Path) -> None:
    server = await start_server(
        repository=seed_repository,
        max_message_bytes=1024 * 1024,
        max_request_sequences=64,
        max_sequence_length=300,
        max_request_steps=12800,
    )
    try:
        async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
            cases = [
                # 64 x 200 x 2 x 4 bytes in is fine, but 64 x 200 x 32 x 4 out is not: refused
                # before it runs
                (
                    (64, 200, 2),
                    "sequence",
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "would be 1642496 bytes, over the 1048576 a message may hold "
                    "(--max-message-bytes)",
                ),
                # exactly 1 MiB of floats, plus the message's own bytes (4 KB allowed for them):
                # gRPC could not send it, so it is refused before it runs, not counted OK and
                # lost; 63 sequences fit
                (
                    (64, 128, 2),
                    "sequence",
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "would be 1052672 bytes, over the 1048576 a message may hold",
                ),
                ((63, 128, 2), "sequence", None, ""),
                (
                    (64, 201, 2),
                    "last_hidden",
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "64 sequences x 201 time steps = 12864 sequence-steps; the limit is 12800 per "
                    "request (--max-request-steps)",
                ),
                ((2, 300, 2), "sequence", None, ""),
                (
                    (65, 1, 2),
                    "last_hidden",
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "65 sequences; the limit is 64 per request (--max-request-sequences)",
                ),
                (
                    (1, 301, 2),
                    "last_hidden",
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the limit is 300 (--max-sequence-length)",
                ),
            ]
            for shape, output, code, message in cases:
                x = np.ones(shape, np.float32)
                if code is None:
                    assert (await client.predict("seed", x, output=output)).sequence is not None
                    continue
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await client.predict("seed", x, output=output)
                assert err.value.code() == code and message in str(err.value.details()), shape
            huge = np.ones((60, 4000, 2), np.float32)  # 1.9 MB in: refused by gRPC itself
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.predict("seed", huge)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            ok = await client.predict("seed", np.ones((1, 3, 2), np.float32))  # still serving
            assert ok.last_hidden is not None
        exhausted = server.metrics.registry.get_sample_value(
            "lstm_requests_total",
            {"model": "seed", "version": "", "rpc": "Predict", "code": "RESOURCE_EXHAUSTED"},
        )
        assert exhausted == 3  # the one gRPC itself refused is not the servicer's to count
    finally:
        await server.stop(grace=1)


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + SETTINGS
GOAWAY, ENHANCE_YOUR_CALM = 7, 11


def until_closed(port: int, send: bytes = b"") -> tuple[bytes, float]:
    """Opens a raw HTTP/2 connection, sends `send`, and reads until the server closes it (a
    hang past 10 s fails): what the server sent, and after how many seconds it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(PREFACE + send)
        began, received = time.monotonic(), b""
        while chunk := connection.recv(4096):
            received += chunk
        return received, time.monotonic() - began


def goaway_code(frames: bytes) -> int | None:
    """The error code of the first GOAWAY among `frames`."""
    while len(frames) >= 9:
        length, kind = int.from_bytes(frames[:3], "big"), frames[3]
        if kind == GOAWAY:
            return int.from_bytes(frames[13:17], "big")
        frames = frames[9 + length :]
    return None


def test_idle_connections_are_closed_and_the_files_limit_is_raised(seed_repository: Path) -> None:
    """A connection that never calls is closed after --max-connection-idle (here 1 s); without
    it, 1,100 of them filled a 1,024-descriptor server."""
    port = free_port()
    process = start(seed_repository, port, "--max-connection-idle", "1")
    try:
        wait_serving(process, port)
        frames, closed_after = until_closed(port)
        assert goaway_code(frames) is not None and b"connection idle" in frames
        assert 0.5 < closed_after < 8
    finally:
        code, err = stop(process)
    assert code == 0, err
    assert re.search(r"open files limit: \d+ \(was \d+; hard limit \d+\)", err)


def test_old_connections_and_ping_floods_are_closed(seed_repository: Path) -> None:
    """--max-connection-age asks a connection to go (clients reconnect, spreading over
    replicas); a client pinging more often than every 10 s is cut off (too_many_pings)."""
    port = free_port()
    args = ("--max-connection-idle", "0", "--max-connection-age", "1", "--grace-period", "1")
    process = start(seed_repository, port, *args)
    try:
        wait_serving(process, port)
        frames, closed_after = until_closed(port)
        assert goaway_code(frames) == 0 and 0.5 < closed_after < 8
        pings = b"".join(bytes([0, 0, 8, 6, 0, 0, 0, 0, 0]) + bytes([n] * 8) for n in range(5))
        frames, closed_after = until_closed(port, pings)
        assert goaway_code(frames) == ENHANCE_YOUR_CALM and closed_after < 0.9  # before its age
        assert b"too_many_pings" in frames
    finally:
        code, err = stop(process)
    assert code == 0, err
