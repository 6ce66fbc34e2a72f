"""Who may talk to the server: TLS / mutual TLS credentials and bearer-token authentication.

Tokens come from a file (one per line, so a new one can be added before the old is removed)
and are compared in constant time. Health checks stay open to orchestrators without a token.
"""

from __future__ import annotations

import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from lstm_serving.core.settings import Settings
from lstm_serving.errors import StartupError

log = logging.getLogger(__name__)
OPEN_METHODS = ("/grpc.health.v1.Health/",)
if TYPE_CHECKING:  # generic only in the type stubs
    Handler = grpc.RpcMethodHandler[Any, Any]


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from --tls-cert/--tls-key; with --tls-client-ca, client certificates required.

    The pair is checked here: gRPC itself only fails to listen, as if the port were taken.
    """
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_cert, settings.tls_key
        )
    except ssl.SSLError as exc:
        raise StartupError(
            f"--tls-key {settings.tls_key} does not go with --tls-cert {settings.tls_cert} "
            f"({exc.reason or exc}): give the key the certificate was issued for, both PEM"
        ) from exc
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def read_tokens(path: Path) -> list[str]:
    tokens = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not tokens:
        raise ValueError(f"{path} holds no token (one per line)")
    return tokens


async def _deny(_requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED,
        "missing or unknown bearer token: send one metadata entry 'authorization: Bearer <token>'",
    )


# What an unauthenticated call gets, whatever its method: a streaming handler that never reads
# its request, so the request is neither decompressed nor decoded (a 16 KB gzip body can
# decompress to 16 MB), only refused.
DENIED: Handler = grpc.stream_stream_rpc_method_handler(_deny)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Answers UNAUTHENTICATED unless `authorization: Bearer <token>` names a known token.

    `reread` takes the file again (on SIGHUP): a token removed from it stops working without a
    restart. A file that cannot be read, or holds none, leaves the tokens as they were.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._tokens = [t.encode() for t in read_tokens(path)]

    def reread(self) -> None:
        try:
            tokens = read_tokens(self._path)
        except (OSError, ValueError) as exc:
            log.error("kept the tokens already read: --auth-token-file %s", exc)
            return
        self._tokens = [t.encode() for t in tokens]
        log.info("re-read %d bearer tokens from %s", len(tokens), self._path)

    def _authorized(self, metadata: Any) -> bool:
        headers = [value for key, value in metadata or () if key == "authorization"]
        if len(headers) != 1:  # none, or several: which would name the caller is ambiguous
            return False
        header = headers[0]
        if not isinstance(header, str) or not header.startswith("Bearer "):
            return False
        given = header[len("Bearer ") :].encode()
        return any(hmac.compare_digest(given, token) for token in self._tokens)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        details = handler_call_details
        handler = await continuation(details)
        method: str = details.method
        metadata = details.invocation_metadata
        if handler is None or method.startswith(OPEN_METHODS) or self._authorized(metadata):
            return handler
        return DENIED
