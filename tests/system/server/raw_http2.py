"""A raw HTTP/2 client for the abuse tests: what no well-behaved gRPC client can be made to do
(a call whose message never arrives, a connection that grants no flow-control window, streams
opened and reset at once). Frames and HPACK literals written by hand, from RFC 9113 and 7541."""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def header_block(path: str, *extra: tuple[str, str]) -> bytes:
    """HPACK literals without indexing: what a gRPC call's HEADERS carry."""
    block = b""
    for name, text in (
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra,
    ):
        block += bytes([0, len(name)]) + name.encode() + bytes([len(text)]) + text.encode()
    return block


def rapid_reset(port: int, streams: int) -> None:
    """Opens `streams` Predict streams on one connection, resetting each at once (CANCEL):
    the CVE-2023-44487 pattern. Reads whatever the server sends so it never blocks on us."""
    headers = header_block("/lstm.v1.LstmService/Predict")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0))
        drain = threading.Thread(target=lambda: _read_all(connection), daemon=True)
        drain.start()
        for first in range(1, 2 * streams, 200):
            connection.sendall(
                b"".join(
                    frame(1, 4, stream, headers) + frame(3, 0, stream, (8).to_bytes(4, "big"))
                    for stream in range(first, min(first + 200, 2 * streams), 2)
                )
            )


def _read_all(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while connection.recv(65536):
            pass


def _gzip_message(message: bytes) -> bytes:
    """One gRPC length-prefixed message, compressed."""
    packed = gzip.compress(message)
    return b"\x01" + len(packed).to_bytes(4, "big") + packed


class NeverReading:
    """A connection whose client grants no flow-control window (SETTINGS_INITIAL_WINDOW_SIZE
    0), so nothing the server answers on it can be sent; it answers SETTINGS and PING, as a
    live client does. Closing it frees what the server holds for it."""

    def __init__(self, port: int) -> None:
        self.connection = socket.create_connection(("127.0.0.1", port), timeout=30)
        no_window = (4).to_bytes(2, "big") + (0).to_bytes(4, "big")
        self.connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, no_window))
        self.next_stream, self.ended = 1, 0  # calls whose trailers came back
        threading.Thread(target=self._answer_control_frames, daemon=True).start()

    def call(self, path: str, messages: list[bytes], body: bytes = b"", end: bool = True) -> None:
        """Starts a call that sends `messages` (gzip), or else `body` as it is, and closes its
        side when `end`."""
        headers = header_block(path, ("grpc-encoding", "gzip"))
        body = b"".join(_gzip_message(m) for m in messages) or body
        stream, self.next_stream = self.next_stream, self.next_stream + 2
        pieces = [body[i : i + 16384] for i in range(0, len(body), 16384)]  # max frame size
        self.connection.sendall(
            frame(1, 4, stream, headers)
            + b"".join(frame(0, 0, stream, piece) for piece in pieces[:-1])
            + frame(0, int(end), stream, pieces[-1])
        )

    def _answer_control_frames(self) -> None:
        """Answers SETTINGS and PING; counts the calls the server ended."""
        buffer = b""
        with contextlib.suppress(OSError):
            while chunk := self.connection.recv(65536):
                buffer += chunk
                while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
                    size, kind, flags = int.from_bytes(buffer[:3], "big"), buffer[3], buffer[4]
                    payload, buffer = buffer[9 : 9 + size], buffer[9 + size :]
                    if kind == 1 and flags & 1:  # HEADERS that end the stream: trailers
                        self.ended += 1
                    if kind == 4 and not flags & 1:
                        self.connection.sendall(frame(4, 1, 0))
                    elif kind == 6 and not flags & 1:
                        self.connection.sendall(frame(6, 1, 0, payload))

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the server may have closed it already
            self.connection.shutdown(socket.SHUT_RDWR)  # close() alone waits for the reader
        self.connection.close()
