"""TLS, mutual TLS and bearer tokens, with certificates made on the fly and real handshakes.

Over 250 lines: the certificate authority built here serves every case in the file.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from lstm_serving.client.client import AsyncLstmClient, Security
from lstm_serving.client.messages import predict_request
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from lstm_serving.proto.v1 import lstm_pb2_grpc as pb_grpc
from lstm_serving.server.app import LstmServer
from lstm_serving.server.metrics_endpoint import MetricsEndpoint
from tests.helpers import ROOT, client, free_port, start, start_server, stop

X = np.ones((1, 3, 2), np.float32)
Key = ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: Key) -> None:
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _certificate(
    subject: str,
    issuer: tuple[x509.Certificate, Key] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> tuple[x509.Certificate, Key]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(signer, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca, server (127.0.0.1) and client certificates; rogue-ca and a client it signed."""
    directory = tmp_path_factory.mktemp("pki")
    ca = _certificate("test CA", None, ca=True)
    rogue = _certificate("rogue CA", None, ca=True)
    _write(directory, "ca", *ca)
    _write(directory, "rogue-ca", *rogue)
    _write(directory, "server", *_certificate("127.0.0.1", ca, server=True))
    _write(directory, "client", *_certificate("client", ca))
    _write(directory, "rogue-client", *_certificate("rogue", rogue))
    (directory / "tokens").write_text("first-token\n\nsecond-token\n")
    return directory


async def _works(target: str, security: Security) -> bool:
    async with AsyncLstmClient(target, timeout=5, security=security) as c:
        try:
            return (await c.predict("seed", X)).last_hidden is not None
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
            return False


@pytest.fixture
async def tls_server(pki: Path, seed_repository: Path) -> AsyncIterator[LstmServer]:
    server = await start_server(
        repository=seed_repository, tls_cert=pki / "server.pem", tls_key=pki / "server.key"
    )
    yield server
    await server.stop(grace=1)


async def test_tls(tls_server: LstmServer, pki: Path) -> None:
    target = f"127.0.0.1:{tls_server.port}"
    assert await _works(target, Security(ca=pki / "ca.pem"))
    assert not await _works(target, Security())  # plaintext to a TLS port
    assert not await _works(target, Security(ca=pki / "rogue-ca.pem"))  # untrusted server


async def test_mutual_tls(pki: Path, seed_repository: Path) -> None:
    server = await start_server(
        repository=seed_repository,
        tls_cert=pki / "server.pem",
        tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.pem",
    )
    target = f"127.0.0.1:{server.port}"
    ca = pki / "ca.pem"
    try:
        assert await _works(
            target, Security(ca=ca, cert=pki / "client.pem", key=pki / "client.key")
        )
        assert not await _works(target, Security(ca=ca))  # no client certificate
        assert not await _works(
            target, Security(ca=ca, cert=pki / "rogue-client.pem", key=pki / "rogue-client.key")
        )
    finally:
        await server.stop(grace=1)


async def test_bearer_tokens(pki: Path, seed_repository: Path) -> None:
    server = await start_server(repository=seed_repository, auth_token_file=pki / "tokens")
    target = f"127.0.0.1:{server.port}"
    try:
        for token in ("first-token", "second-token"):  # two, so tokens can be rotated
            assert await _works(target, Security(token=token))
        async with AsyncLstmClient(target, timeout=5) as anonymous:
            assert await anonymous.health() == "SERVING"  # health stays open
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await anonymous.predict("seed", X)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer" in str(err.value.details())
            stub = v2_grpc.GRPCInferenceServiceStub(anonymous.channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ModelInfer(v2.ModelInferRequest(model_name="seed"))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.ModelStreamInfer(iter([v2.ModelInferRequest()])):
                    pass
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with AsyncLstmClient(target, timeout=5) as doubled:
            two = (("authorization", "Bearer nope"), ("authorization", "Bearer first-token"))
            with pytest.raises(grpc.aio.AioRpcError) as err:  # which one names the caller?
                stub_v1 = pb_grpc.LstmServiceStub(doubled.channel)
                await stub_v1.Predict(predict_request("seed", X), metadata=two)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not await _works(target, Security(token="first-token-but-longer"))
        assert not await _works(target, Security(token="first"))
    finally:
        await server.stop(grace=1)


async def test_reflection_can_be_turned_off(seed_repository: Path) -> None:
    server = await start_server(repository=seed_repository, reflection=False)
    try:
        async with AsyncLstmClient(f"127.0.0.1:{server.port}") as c:
            stub = reflection_pb2_grpc.ServerReflectionStub(c.channel)  # type: ignore[arg-type]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.ServerReflectionInfo(  # type: ignore[operator]
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                ):
                    pass
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(grace=1)


def test_cli_over_mutual_tls_with_a_token(pki: Path, seed_repository: Path) -> None:
    port = free_port()
    process = start(
        seed_repository,
        port,
        "--tls-cert",
        str(pki / "server.pem"),
        "--tls-key",
        str(pki / "server.key"),
        "--tls-client-ca",
        str(pki / "ca.pem"),
        "--auth-token-file",
        str(pki / "tokens"),
    )
    tls = [
        "--tls-ca",
        str(pki / "ca.pem"),
        "--tls-cert",
        str(pki / "client.pem"),
        "--tls-key",
        str(pki / "client.key"),
    ]
    try:
        wait_serving_tls(process, port, tls)
        (pki / "token").write_text("second-token\n")
        out = client(
            port,
            *tls,
            "--token-file",
            str(pki / "token"),
            "--json",
            "predict",
            "seed",
            "--random",
            "2,4",
        )
        assert out.returncode == 0, out.stderr
        assert np.array(json.loads(out.stdout)["last_hidden"]).shape == (2, 32)
        denied = client(port, *tls, "predict", "seed", "--random", "1,2")
        assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
    finally:
        code, err = stop(process)
    assert code == 0, err
    assert "TLS, client certificates, bearer tokens" in err


def wait_serving_tls(process: subprocess.Popen[str], port: int, tls: list[str]) -> None:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if client(port, *tls, "--timeout", "1", "health").stdout.strip() == "SERVING":
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    raise AssertionError("not SERVING over TLS in time")


def test_bad_tls_settings_exit_2(tmp_path: Path, pki: Path, seed_repository: Path) -> None:
    for args, message in (
        (["--tls-cert", str(pki / "server.pem")], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", str(pki / "ca.pem")], "needs --tls-cert"),
        (["--auth-token-file", str(tmp_path / "none")], "no such file"),
    ):
        process = start(seed_repository, free_port(), *args)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 2 and message in err, err
    (tmp_path / "empty").write_text("\n")
    process = start(seed_repository, free_port(), "--auth-token-file", str(tmp_path / "empty"))
    _, err = process.communicate(timeout=30)
    assert process.returncode == 1 and "holds no token" in err and "Traceback" not in err


def test_a_key_that_is_not_the_certificates_stops_the_start_clearly(pki: Path) -> None:
    process = start(
        ROOT / "models",
        free_port(),
        "--tls-cert",
        str(pki / "server.pem"),
        "--tls-key",
        str(pki / "client.key"),
    )
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "does not go with --tls-cert" in err and "is the port in use" not in err
    assert "Traceback" not in err and "Event loop is closed" not in err


async def test_tokens_are_re_read_on_sighup(seed_repository: Path, tmp_path: Path) -> None:
    """Rotation without a restart: after the file changes and SIGHUP (server.reload), the
    removed token is refused and the new one works; an emptied file changes nothing."""
    tokens = tmp_path / "tokens"
    tokens.write_text("old-token\n")
    server = await start_server(repository=seed_repository, auth_token_file=tokens)
    target = f"127.0.0.1:{server.port}"
    try:
        assert await _works(target, Security(token="old-token"))
        tokens.write_text("new-token\n")
        await server.reload()
        assert not await _works(target, Security(token="old-token"))
        assert await _works(target, Security(token="new-token"))
        tokens.write_text("\n")  # a mistake while editing: keep what works
        await server.reload()
        assert await _works(target, Security(token="new-token"))
    finally:
        await server.stop(grace=1)


async def test_metrics_over_mutual_tls(pki: Path, seed_repository: Path) -> None:
    """--metrics-tls: /metrics with the server's certificate, only to scrapers holding a client
    certificate; a connection that never starts its handshake neither blocks other scrapers
    nor holds its thread past the idle timeout."""
    server = await start_server(
        repository=seed_repository,
        metrics_port=free_port(),
        metrics_host="127.0.0.1",
        metrics_tls=True,
        tls_cert=pki / "server.pem",
        tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.pem",
    )
    try:
        await asyncio.to_thread(_scrape_over_tls, server.settings.metrics_port, pki)
    finally:
        await server.stop(grace=1)


def test_metrics_over_mutual_tls_with_workers(pki: Path, seed_repository: Path) -> None:
    """--workers N: the parent serves /metrics, with the same TLS and client certificates."""
    port, metrics = free_port(), free_port()
    server_tls = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")]
    process = start(
        seed_repository,
        port,
        "--workers",
        "2",
        *server_tls,
        "--tls-client-ca",
        str(pki / "ca.pem"),
        "--metrics-tls",
        "--metrics-port",
        str(metrics),
        "--metrics-host",
        "127.0.0.1",
    )
    client_tls = ["--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "client.pem")]
    try:
        wait_serving_tls(process, port, [*client_tls, "--tls-key", str(pki / "client.key")])
        _scrape_over_tls(metrics, pki)
    finally:
        code, err = stop(process)
    assert code == 0, err


def _scrape_over_tls(port: int, pki: Path) -> None:
    url = f"https://127.0.0.1:{port}/metrics"
    scraper = ssl.create_default_context(cafile=pki / "ca.pem")
    scraper.load_cert_chain(pki / "client.pem", pki / "client.key")
    anonymous = ssl.create_default_context(cafile=pki / "ca.pem")
    with socket.create_connection(("127.0.0.1", port)):  # connected, and silent
        for _ in range(3):
            with urllib.request.urlopen(url, context=scraper, timeout=10) as response:
                assert b"lstm_requests_total" in response.read()
    with pytest.raises(OSError):  # ssl.SSLError or a reset: no client certificate
        urllib.request.urlopen(url, context=anonymous, timeout=10).read()
    with pytest.raises(OSError):  # plain HTTP to the TLS port
        urllib.request.urlopen(url.replace("https", "http"), timeout=10).read()


def test_metrics_connections_that_send_nothing_are_closed() -> None:
    endpoint = MetricsEndpoint(0, "127.0.0.1", CollectorRegistry(), idle_timeout=0.5)
    try:
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as idle:
            began = time.monotonic()
            assert idle.recv(1) == b""  # closed by the server (a hang fails at 10 s)
            assert time.monotonic() - began < 5
    finally:
        endpoint.close()


async def test_the_health_port_serves_health_alone_in_plaintext(
    pki: Path, seed_repository: Path
) -> None:
    """--health-port: a kubelet's gRPC probe (no TLS, no token) reaches health there while
    the data port wants TLS and a token; nothing else is served on it."""
    tokens = pki / "health-tokens"
    tokens.write_text("a-token\n")
    health_port = free_port()
    server = await start_server(
        repository=seed_repository,
        tls_cert=pki / "server.pem",
        tls_key=pki / "server.key",
        auth_token_file=tokens,
        health_port=health_port,
    )
    try:
        async with AsyncLstmClient(f"127.0.0.1:{health_port}") as plain:
            assert await plain.health() == "SERVING"
            assert await plain.health("lstm.v1.LstmService") == "SERVING"
            with pytest.raises(grpc.aio.AioRpcError) as other:
                await plain.list_models()
            assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
        data = f"127.0.0.1:{server.port}"
        assert not await _works(data, Security(ca=pki / "ca.pem"))
        assert await _works(data, Security(ca=pki / "ca.pem", token="a-token"))
    finally:
        await server.stop(grace=1)
