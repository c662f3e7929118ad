"""TLS for HTTPS and gRPC: mutual TLS, a minimum version, reload without restart, bad files.

Certificates are made here with `cryptography`: two CAs, server certificates for 127.0.0.1
signed by each, and a client certificate. Servers run on free ports and stop themselves.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import shipyard
from shipyard.codecs.proto import grpc_service_pb2 as pb
from shipyard.errors import ShipyardError
from shipyard.serving.server import RunningServer, start_in_thread
from shipyard.serving.settings import load_settings
from shipyard.serving.tls import ServerTls
from tests.serving.conftest import GRAPHS

pytestmark = pytest.mark.timeout(60)


@dataclass
class Pki:
    """One CA and what it signed, as PEM files in `folder`."""

    folder: Path
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    serial: int


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _pki(folder: Path, label: str) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{label} CA"))
        .issuer_name(_name(f"{label} CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: Any, sans: list[x509.GeneralName]) -> tuple[x509.Certificate, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client, client_key = leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    pem = serialization.Encoding.PEM
    pki = Pki(
        folder,
        folder / "ca.pem",
        folder / "cert.pem",
        folder / "key.pem",
        folder / "client.pem",
        folder / "client-key.pem",
        server.serial_number,
    )
    pki.ca.write_bytes(ca.public_bytes(pem))
    pki.cert.write_bytes(server.public_bytes(pem))
    _write_key(pki.key, server_key)
    pki.client_cert.write_bytes(client.public_bytes(pem))
    _write_key(pki.client_key, client_key)
    return pki


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    shipyard.pack(GRAPHS["scale"](), name="scale", repo=path)
    return path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return _pki(tmp_path / "a", "A")


def _serve(repo: Path, pki: Pki, **tls: Any) -> RunningServer:
    settings = load_settings(
        repository=repo,
        port=0,
        grpc_port=0,
        poll_interval_s=0,
        tls_cert=pki.cert,
        tls_key=pki.key,
        tls=tls,
    )
    return start_in_thread(settings=settings)


def _handshake(
    server: RunningServer,
    *,
    ca: Path,
    client: Pki | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> int:
    """Connect over TLS; the serial number of the certificate the server presented."""
    context = ssl.create_default_context(cafile=str(ca))
    if max_version is not None:
        context.maximum_version = max_version
    if client is not None:
        context.load_cert_chain(client.client_cert, client.client_key)
    with (
        socket.create_connection((server.host, server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        # TLS 1.3 reports a refused client certificate only on the first read
        tls.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert tls.recv(64).startswith(b"HTTP/1.1 200")
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _grpc_live(server: RunningServer, *, ca: Path, client: Pki | None = None) -> str:
    key = client.client_key.read_bytes() if client else None
    chain = client.client_cert.read_bytes() if client else None
    credentials = grpc.ssl_channel_credentials(ca.read_bytes(), key, chain)
    with grpc.secure_channel(f"127.0.0.1:{server.grpc_port}", credentials) as channel:
        live = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerLive",
            request_serializer=pb.ServerLiveRequest.SerializeToString,
            response_deserializer=pb.ServerLiveResponse.FromString,
        )
        try:
            return "OK" if live(pb.ServerLiveRequest(), timeout=5).live else "NOT LIVE"
        except grpc.RpcError as exc:
            return str(exc.code().name)


def _refused(call: Callable[[], Any]) -> bool:
    try:
        call()
    except (ssl.SSLError, ConnectionError, AssertionError):
        return True
    return False


def test_mutual_tls_needs_a_client_certificate(repo: Path, pki: Pki) -> None:
    with _serve(repo, pki, client_ca=pki.ca) as server:
        assert _refused(lambda: _handshake(server, ca=pki.ca))
        assert _handshake(server, ca=pki.ca, client=pki) == pki.serial
        assert _grpc_live(server, ca=pki.ca) == "UNAVAILABLE"
        assert _grpc_live(server, ca=pki.ca, client=pki) == "OK"


def test_minimum_version_refuses_tls_1_2(repo: Path, pki: Pki) -> None:
    with _serve(repo, pki, min_version="1.3") as server:
        assert _refused(lambda: _handshake(server, ca=pki.ca, max_version=ssl.TLSVersion.TLSv1_2))
        assert _handshake(server, ca=pki.ca) == pki.serial
    with _serve(repo, pki) as server:  # the default, 1.2, still lets 1.2 clients in
        assert _handshake(server, ca=pki.ca, max_version=ssl.TLSVersion.TLSv1_2) == pki.serial


def test_replaced_certificate_is_served_without_a_restart(
    repo: Path, pki: Pki, tmp_path: Path
) -> None:
    other = _pki(tmp_path / "b", "B")
    with _serve(repo, pki, reload_interval_s=0.2) as server:
        assert _handshake(server, ca=pki.ca) == pki.serial
        assert _grpc_live(server, ca=pki.ca) == "OK"
        assert _grpc_live(server, ca=other.ca) == "UNAVAILABLE"
        # replace the files the way tools do: write aside, then rename over
        for source, target in ((other.key, pki.key), (other.cert, pki.cert)):
            aside = target.with_suffix(".new")
            aside.write_bytes(source.read_bytes())
            aside.replace(target)
        time.sleep(0.3)
        assert _handshake(server, ca=other.ca) == other.serial
        assert _grpc_live(server, ca=other.ca) == "OK"
        assert _grpc_live(server, ca=pki.ca) == "UNAVAILABLE"


def test_a_broken_replacement_keeps_the_old_certificate(repo: Path, pki: Pki) -> None:
    with _serve(repo, pki, reload_interval_s=0.1) as server:
        pki.cert.write_text("not a certificate")
        time.sleep(0.2)
        assert _handshake(server, ca=pki.ca) == pki.serial
        assert _grpc_live(server, ca=pki.ca) == "OK"


@pytest.mark.parametrize("broken", ["cert", "key", "mismatch", "ca"])
def test_unusable_files_fail_the_start_in_one_line(
    repo: Path, pki: Pki, tmp_path: Path, broken: str
) -> None:
    cert, key, ca = pki.cert, pki.key, pki.ca
    if broken == "cert":
        cert.write_text("-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n")
    elif broken == "key":
        key.write_text("not a key")
    elif broken == "mismatch":
        key = _pki(tmp_path / "c", "C").key
    else:
        ca.write_text("garbage")
    named = {"cert": cert, "key": key, "mismatch": key, "ca": ca}[broken]
    with pytest.raises(ShipyardError) as info:
        ServerTls(cert=cert, key=key, client_ca=ca)
    assert str(named) in str(info.value) and "\n" not in str(info.value)
    settings = load_settings(
        repository=repo,
        port=0,
        poll_interval_s=0,
        tls_cert=cert,
        tls_key=key,
        tls={"client_ca": ca},
    )
    with pytest.raises(ShipyardError, match=str(named)):
        start_in_thread(settings=settings, timeout_s=20)


def test_unknown_ciphers_are_refused(pki: Pki) -> None:
    with pytest.raises(ShipyardError, match="tls.ciphers 'NO-SUCH-CIPHER'"):
        ServerTls(cert=pki.cert, key=pki.key, ciphers="NO-SUCH-CIPHER")
    assert ServerTls(cert=pki.cert, key=pki.key, ciphers="ECDHE+AESGCM").ssl_context()


def test_tls_options_need_a_certificate(repo: Path) -> None:
    with pytest.raises(ShipyardError, match="need a certificate"):
        load_settings(repository=repo, tls={"min_version": "1.3"})
