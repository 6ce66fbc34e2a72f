"""GET /metrics: prometheus-client's own HTTP server on a background thread, optionally TLS.

The metrics themselves are declared in `core.metrics`; this is only how they are served.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import start_http_server

from lstm_serving.core.settings import Settings
from lstm_serving.errors import StartupError

METRICS_IDLE_TIMEOUT_S = 10.0  # a /metrics connection silent this long is closed


class MetricsEndpoint:
    """GET /metrics on a background thread (prometheus-client's own server), over TLS when
    given a certificate (and requiring client certificates when given a CA).

    A connection that sends nothing for `idle_timeout` seconds is closed: each one holds a
    thread (docs/decisions.md).
    """

    def __init__(
        self,
        port: int,
        host: str,
        registry: CollectorRegistry,
        tls: tuple[Path, Path] | None = None,
        client_ca: Path | None = None,
        idle_timeout: float = METRICS_IDLE_TIMEOUT_S,
    ) -> None:
        certfile, keyfile = (str(tls[0]), str(tls[1])) if tls else (None, None)
        try:
            self._server, self._thread = start_http_server(
                port,
                addr=host,
                registry=registry,
                certfile=certfile,
                keyfile=keyfile,
                client_cafile=str(client_ca) if client_ca else None,
                client_auth_required=client_ca is not None,
            )
        except OSError as exc:
            raise StartupError(
                f"cannot serve /metrics on {host}:{port}: {exc.strerror} (is the port in use? "
                "choose another with --metrics-port, or 0 to turn /metrics off)"
            ) from exc
        if tls:  # the TLS handshake in the handler's thread, under its timeout, not in accept()
            self._server.socket.do_handshake_on_connect = False  # type: ignore[attr-defined]
        # a connection that fails (a bad handshake, plain HTTP to TLS) is the caller's
        # problem: socketserver would print a traceback for each, a log flood anyone can cause
        self._server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        handler: type = self._server.RequestHandlerClass  # type: ignore[assignment]
        self._server.RequestHandlerClass = type(  # pyright: ignore[reportAttributeAccessIssue]
            "IdleTimeoutHandler", (handler,), {"timeout": idle_timeout}
        )
        self.port = int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(settings: Settings, registry: CollectorRegistry) -> MetricsEndpoint:
    """/metrics as the settings say, TLS and client certificates included: one place, so a
    single process and the parent of --workers serve it alike."""
    cert, key = settings.tls_cert, settings.tls_key
    tls = (cert, key) if cert and key and settings.metrics_tls else None
    return MetricsEndpoint(
        settings.metrics_port,
        settings.metrics_host,
        registry,
        tls,
        settings.tls_client_ca if tls else None,
    )
