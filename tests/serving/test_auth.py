"""Access control over V2 REST, TF Serving REST and gRPC; exposure, TLS, signatures, KEK."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tritonclient.utils import InferenceServerException

from shipyard.codecs import encode_request
from shipyard.errors import UsageError
from shipyard.security.encryption import encrypt_version
from shipyard.security.errors import AuthenticationError, PermissionDeniedError
from shipyard.security.keys import KeyPaths, init_keys, read_secret
from shipyard.security.signing import sign_version
from shipyard.security.tokens import TokenStore
from shipyard.serving.addresses import is_loopback
from shipyard.serving.routes import ALL_MODELS, ANY_MODEL, Access
from shipyard.serving.routing import TABLE
from shipyard.serving.security import check_exposure
from shipyard.serving.server import start_in_thread
from shipyard.serving.settings import ServerSettings

pytestmark = pytest.mark.anyio

X = np.arange(8, dtype=np.float32).reshape(2, 4)
INFER_BODY = encode_request({"x": X})[0]
TF_BODY = b'{"instances": [[1.0, 2.0, 3.0, 4.0]]}'

SCOPES = {
    "infer-scale": ["infer:scale"],
    "meta-scale": ["metadata:scale"],
    "admin-scale": ["admin:scale"],
    "meta-all": ["metadata:*"],
    "admin-all": ["admin:*"],
    "infer-other": ["infer:other-*", "metadata:other-*"],
}
# Which tokens each kind of access lets through (admin implies infer and metadata).
ALLOWED = {
    "metadata:scale": {"meta-scale", "admin-scale", "meta-all", "admin-all"},
    "metadata:any": {"meta-scale", "admin-scale", "meta-all", "admin-all", "infer-other"},
    "metadata:all": {"meta-all", "admin-all"},
    "infer:scale": {"infer-scale", "admin-scale", "admin-all"},
    "admin:scale": {"admin-scale", "admin-all"},
    "admin:all": {"admin-all"},
}
V2_ROUTES: list[tuple[str, str, bytes | None, str]] = [
    ("GET", "/v2", None, "metadata:any"),
    ("GET", "/v2/models/scale", None, "metadata:scale"),
    ("GET", "/v2/models/scale/versions/1", None, "metadata:scale"),
    ("GET", "/v2/models/scale/ready", None, "metadata:scale"),
    ("GET", "/v2/models/scale/versions/1/ready", None, "metadata:scale"),
    ("GET", "/v2/models/scale/stats", None, "metadata:scale"),
    ("GET", "/v2/models/scale/versions/1/stats", None, "metadata:scale"),
    ("GET", "/v2/models/stats", None, "metadata:all"),
    ("GET", "/metrics", None, "metadata:all"),
    ("POST", "/v2/models/scale/infer", INFER_BODY, "infer:scale"),
    ("POST", "/v2/models/scale/versions/1/infer", INFER_BODY, "infer:scale"),
    ("POST", "/v2/repository/index", b"", "admin:all"),
    ("POST", "/v2/repository/models/scale/load", b"", "admin:scale"),
    ("POST", "/v2/repository/models/scale/unload", b"", "admin:scale"),
    ("GET", "/v2/no/such/route", None, "admin:all"),
]
TF_ROUTES: list[tuple[str, str, bytes | None, str]] = [
    ("GET", "/v1/models/scale", None, "metadata:scale"),
    ("GET", "/v1/models/scale/versions/1", None, "metadata:scale"),
    ("GET", "/v1/models/scale/metadata", None, "metadata:scale"),
    ("GET", "/v1/models/scale/versions/1/metadata", None, "metadata:scale"),
    ("POST", "/v1/models/scale:predict", TF_BODY, "infer:scale"),
    ("POST", "/v1/models/scale/versions/1:predict", TF_BODY, "infer:scale"),
    ("POST", "/v1/models/scale:classify", b'{"examples": [{"x": 1.0}]}', "infer:scale"),
    ("POST", "/v1/models/scale:regress", b'{"examples": [{"x": 1.0}]}', "infer:scale"),
]


def make_tokens(path: Path) -> dict[str, str]:
    store = TokenStore(path)
    return {name: store.create(name, scopes) for name, scopes in SCOPES.items()}


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "tokens.json"
    return path, make_tokens(path)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def _call(
    client: httpx.AsyncClient, method: str, path: str, body: bytes | None, secret: str | None
) -> httpx.Response:
    headers = bearer(secret) if secret else {}
    return await client.request(method, path, content=body, headers=headers)


async def _check_route(
    client: httpx.AsyncClient,
    secrets: dict[str, str],
    method: str,
    path: str,
    body: bytes | None,
    access: str,
) -> None:
    where = f"{method} {path}"
    anonymous = await _call(client, method, path, body, None)
    assert anonymous.status_code == 401, where
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in anonymous.json()["error"]
    for bad in ("shp_not-a-real-token", "garbage"):
        response = await _call(client, method, path, body, bad)
        assert response.status_code == 401, where
    basic = await client.request(method, path, content=body, headers={"Authorization": "Basic a"})
    assert basic.status_code == 401, where
    for name, secret in secrets.items():
        response = await _call(client, method, path, body, secret)
        if name in ALLOWED[access]:
            assert response.status_code not in (401, 403), f"{where} as {name}: {response.text}"
            if path.endswith("/unload") and response.status_code == 200:
                reload = await _call(
                    client, "POST", "/v2/repository/models/scale/load", b"", secrets["admin-all"]
                )
                assert reload.status_code == 200
        else:
            assert response.status_code == 403, f"{where} as {name}: {response.text}"
            assert name in response.json()["error"]
            assert "insufficient_scope" in response.headers["www-authenticate"]


@pytest.mark.parametrize(
    ("method", "path", "body", "access"), V2_ROUTES, ids=[f"{m} {p}" for m, p, _, _ in V2_ROUTES]
)
async def test_every_v2_route_by_scope(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[..., Any],
    tokens: tuple[Path, dict[str, str]],
    method: str,
    path: str,
    body: bytes | None,
    access: str,
) -> None:
    pack()
    async with app_client(settings_for(repo, auth=tokens[0])) as client:
        await _check_route(client, tokens[1], method, path, body, access)


@pytest.mark.parametrize(
    ("method", "path", "body", "access"), TF_ROUTES, ids=[f"{m} {p}" for m, p, _, _ in TF_ROUTES]
)
async def test_every_tfserving_route_by_scope(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[..., Any],
    tokens: tuple[Path, dict[str, str]],
    method: str,
    path: str,
    body: bytes | None,
    access: str,
) -> None:
    pack()
    async with app_client(settings_for(repo, auth=tokens[0])) as client:
        await _check_route(client, tokens[1], method, path, body, access)
        if path.endswith(":predict"):
            ok = await _call(client, method, path, body, tokens[1]["infer-scale"])
            assert ok.status_code == 200, ok.text


async def test_health_stays_open_and_metrics_can_be_opened(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[..., Any],
    tokens: tuple[Path, dict[str, str]],
) -> None:
    pack()
    async with app_client(settings_for(repo, auth=tokens[0])) as client:
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert (await client.get(path)).status_code == 200
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/openapi.json")).status_code == 401
        allowed = await client.get("/openapi.json", headers=bearer(tokens[1]["meta-scale"]))
        assert allowed.status_code in (200, 404)  # 404 until the OpenAPI route exists
    settings = settings_for(repo, auth=tokens[0], metrics_require_auth=False)
    async with app_client(settings) as client:
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200 and "shipyard_models_loaded" in metrics.text


async def test_unknown_routes_need_admin_before_they_404(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[..., Any],
    tokens: tuple[Path, dict[str, str]],
) -> None:
    pack()
    secrets = tokens[1]
    async with app_client(settings_for(repo, auth=tokens[0])) as client:
        for path in ("/", "/v3/anything", "/v2/models/", "/v1/models/"):
            assert (await client.get(path)).status_code == 401, path
            assert (await client.get(path, headers=bearer(secrets["meta-all"]))).status_code == 403
            response = await client.get(path, headers=bearer(secrets["admin-all"]))
            assert response.status_code not in (401, 403), path


async def test_revoked_and_expired_tokens_are_refused(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[..., Any],
    tmp_path: Path,
) -> None:
    pack()
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    live = store.create("live", ["infer:scale"])
    doomed = store.create("doomed", ["infer:scale"])
    expired = store.create("old", ["infer:scale"], expires=dt.timedelta(hours=1))
    _expire(path, "old")  # creating an already-expired token is refused
    async with app_client(settings_for(repo, auth=path)) as client:
        url = "/v2/models/scale/infer"
        assert (await client.post(url, content=INFER_BODY, headers=bearer(doomed))).is_success
        store.revoke("doomed")  # reaches the running server: the file is re-read on change
        assert (
            await client.post(url, content=INFER_BODY, headers=bearer(doomed))
        ).status_code == 401
        assert (
            await client.post(url, content=INFER_BODY, headers=bearer(expired))
        ).status_code == 401
        assert (await client.post(url, content=INFER_BODY, headers=bearer(live))).is_success


def test_route_classification_matches_the_table() -> None:
    cases = {
        "/v2/health/live": None,
        "/v2/health/ready": None,
        "/v2/health/other": Access("admin", ALL_MODELS),
        "/v2": Access("metadata", ANY_MODEL),
        "/openapi.json": Access("metadata", ANY_MODEL),
        "/metrics": Access("metadata", ALL_MODELS),
        "/v2/models/stats": Access("metadata", ALL_MODELS),
        "/v2/models/stats/infer": Access("infer", "stats"),
        "/v2/models/a/versions/infer": Access("metadata", "a"),  # version "infer"'s metadata
        "/v2/models/a/junk/infer": Access("metadata", "a"),  # no route: a's prefix
        "/v2/models/a/versions/2/ready": Access("metadata", "a"),
        "/v2/repository/models/a/unload": Access("admin", "a"),
        "/v2/repository/other": Access("admin", ALL_MODELS),
        "/v1/models/a:predict": Access("infer", "a"),
        "/v1/models/a/versions/3:regress": Access("infer", "a"),
        "/v1/models/a/labels/x:classify": Access("infer", "a"),
        "/v1/models/a:unknownverb": Access("infer", "a"),
        "/v1/models/a/metadata": Access("metadata", "a"),
        "/v1/models/a": Access("metadata", "a"),
        "/v1/models/:predict": Access("admin", ALL_MODELS),
        "/v1/other": Access("admin", ALL_MODELS),
    }
    for path, expected in cases.items():
        assert TABLE.access(path) == expected, path
    assert TABLE.access("/metrics", metrics_require_auth=False) is None


def test_non_loopback_bind_needs_auth_or_insecure(tmp_path: Path, repo: Path) -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.com", ""):
        assert not is_loopback(host), host
    exposed = ServerSettings(host="0.0.0.0", repository=repo, port=0)
    with pytest.raises(UsageError, match="--auth") as info:
        check_exposure(exposed)
    assert "--insecure" in str(info.value)
    with pytest.raises(UsageError, match="without authentication"):
        start_in_thread(settings=exposed)  # refused before anything binds
    check_exposure(exposed.model_copy(update={"insecure": True}))
    check_exposure(exposed.model_copy(update={"auth": tmp_path / "tokens.json"}))
    check_exposure(ServerSettings(host="127.0.0.1", repository=repo))


def test_settings_tie_security_options_together(repo: Path) -> None:
    with pytest.raises(ValueError, match="--pub"):
        ServerSettings(repository=repo, require_signature=True)
    with pytest.raises(ValueError, match="tls_key"):
        ServerSettings(repository=repo, tls_cert=Path("cert.pem"))


def test_missing_token_file_is_refused_at_startup(
    repo: Path, settings_for: Callable[..., ServerSettings], tmp_path: Path
) -> None:
    from shipyard.serving.lifecycle import Server

    with pytest.raises(UsageError, match="tokens create"):
        Server(settings_for(repo, auth=tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UsageError, match="chmod 600"):  # open to others: refused unread
        Server(settings_for(repo, auth=broken))
    broken.chmod(0o600)
    with pytest.raises(UsageError, match="not a valid Shipyard token file"):
        Server(settings_for(repo, auth=broken))


# -- real servers -------------------------------------------------------------------------


@pytest.fixture
def auth_server(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    tokens: tuple[Path, dict[str, str]],
) -> Iterator[tuple[str, dict[str, str]]]:
    pack()
    with start_in_thread(settings=settings_for(repo, auth=tokens[0])) as server:
        yield f"{server.host}:{server.port}", tokens[1]


def test_tritonclient_with_and_without_a_token(auth_server: tuple[str, dict[str, str]]) -> None:
    url, secrets = auth_server
    client = triton.InferenceServerClient(url, connection_timeout=10, network_timeout=10)
    try:
        assert client.is_server_live()  # health needs no token
        x = triton.InferInput("x", [2, 4], "FP32")
        x.set_data_from_numpy(X, binary_data=True)
        result = client.infer("scale", [x], headers=bearer(secrets["infer-scale"]))
        np.testing.assert_allclose(result.as_numpy("y"), X * 2)
        with pytest.raises(InferenceServerException) as info:
            client.infer("scale", [x])
        assert info.value.status() == "401" and "Bearer" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.infer("scale", [x], headers=bearer(secrets["meta-scale"]))
        assert info.value.status() == "403"
        metadata = client.get_model_metadata("scale", headers=bearer(secrets["meta-scale"]))
        assert metadata["name"] == "scale"
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("scale")
        assert info.value.status() == "401"
    finally:
        client.close()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_with_a_self_signed_certificate(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    tokens: tuple[Path, dict[str, str]],
    tmp_path: Path,
) -> None:
    pack()
    cert, key = _self_signed(tmp_path)
    settings = settings_for(repo, auth=tokens[0], tls_cert=cert, tls_key=key)
    with start_in_thread(settings=settings) as server:
        assert server.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=server.url, verify=trust, timeout=10) as client:
            assert client.get("/v2/health/ready").status_code == 200
            response = client.post(
                "/v2/models/scale/infer",
                content=INFER_BODY,
                headers=bearer(tokens[1]["infer-scale"]),
            )
            assert response.status_code == 200
            assert client.post("/v2/models/scale/infer", content=INFER_BODY).status_code == 401
        with (
            httpx.Client(base_url=server.url, timeout=10) as untrusting,
            pytest.raises(httpx.ConnectError),
        ):
            untrusting.get("/v2/health/ready")  # the default trust store rejects it
        plain = f"http://{server.host}:{server.port}"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{plain}/v2/health/ready", timeout=5)


# -- signatures and encrypted packages -----------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> KeyPaths:
    return init_keys(tmp_path / "keys")


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SHIPYARD_KEK", "SHIPYARD_AUDIT_KEY", "SHIPYARD_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


async def test_require_signature_refuses_unsigned_and_tampered_versions(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[..., Any],
    keys: KeyPaths,
) -> None:
    sign_version(pack(), keys.signing_key)
    settings = settings_for(repo, require_signature=True, public_key=keys.public_key)
    async with app_client(settings) as client:
        assert (await client.get("/v2/models/scale/versions/1/ready")).status_code == 200
        pack(version=2)  # unsigned
        response = await client.post("/v2/repository/models/scale/load")
        # version 1 still serves, but the load of the newest version failed: say so (Triton)
        assert response.status_code == 400 and "not signed" in response.json()["error"]
        tampered = pack(version=3)
        sign_version(tampered, keys.signing_key)
        _flip_byte(tampered / "model.onnx")
        response = await client.post("/v2/repository/models/scale/load")
        assert response.status_code == 400 and "version 3" in response.json()["error"]
        index = {r.get("version"): r for r in (await client.post("/v2/repository/index")).json()}
        assert index["1"]["state"] == "READY"
        assert index["2"]["state"] == "UNAVAILABLE" and "not signed" in index["2"]["reason"]
        assert index["3"]["state"] == "UNAVAILABLE"
        assert "model.onnx" in index["3"]["reason"] and "signing" in index["3"]["reason"]
        infer = await client.post("/v2/models/scale/infer", content=INFER_BODY)
        assert infer.status_code == 200 and infer.json()["model_version"] == "1"


async def test_key_file_decrypts_encrypted_packages(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[..., Any],
    keys: KeyPaths,
) -> None:
    encrypt_version(pack(), read_secret(keys.data_key))
    async with app_client(settings_for(repo, key_file=keys.data_key)) as client:
        response = await client.post("/v2/models/scale/infer", content=INFER_BODY)
        assert response.status_code == 200, response.text
    async with app_client(settings_for(repo, strict_readiness=False)) as client:
        index = (await client.post("/v2/repository/index")).json()
        assert index[0]["state"] == "UNAVAILABLE" and "key" in index[0]["reason"]
    other = init_keys(repo.parent / "other-keys")
    async with app_client(settings_for(repo, key_file=other.data_key)) as client:
        assert (await client.post("/v2/models/scale/infer", content=INFER_BODY)).status_code == 503


# -- gRPC hook ----------------------------------------------------------------------------


async def test_grpc_authorize_hook(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    tokens: tuple[Path, dict[str, str]],
) -> None:
    from shipyard.serving.lifecycle import Server

    pack()
    authorize = Server(settings_for(repo, auth=tokens[0])).security.authorize
    secrets = tokens[1]

    def meta(name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {secrets[name]}"}

    assert await authorize({}, "ServerLive", None) == "anonymous"  # health stays open
    await authorize({}, "ModelReady", None)
    with pytest.raises(AuthenticationError):
        await authorize({}, "ModelReady", "scale")  # ModelReady of a model is metadata
    with pytest.raises(AuthenticationError):
        await authorize({}, "ModelInfer", "scale")
    with pytest.raises(AuthenticationError):
        await authorize({"authorization": "Bearer shp_nope"}, "ModelInfer", "scale")
    assert await authorize(meta("infer-scale"), "ModelInfer", "scale") == "infer-scale"
    with pytest.raises(PermissionDeniedError):
        await authorize(meta("infer-scale"), "ModelMetadata", "scale")
    await authorize(meta("meta-scale"), "ServerMetadata", None)  # any metadata scope
    with pytest.raises(PermissionDeniedError):
        await authorize(meta("meta-scale"), "ModelStatistics", None)  # every model's
    await authorize(meta("meta-all"), "ModelStatistics", None)
    with pytest.raises(PermissionDeniedError):
        await authorize(meta("admin-scale"), "RepositoryIndex", None)
    await authorize(meta("admin-scale"), "RepositoryModelLoad", "scale")
    await authorize(meta("admin-all"), "RepositoryIndex", None)


def test_grpc_answers_unauthenticated_and_permission_denied(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    tokens: tuple[Path, dict[str, str]],
) -> None:
    import grpc

    from shipyard.codecs.proto import grpc_service_pb2 as pb

    pack()
    secrets = tokens[1]
    settings = settings_for(repo, auth=tokens[0], grpc_port=0)
    with start_in_thread(settings=settings) as server:
        assert server.grpc_port
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            infer = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            request = pb.ModelInferRequest(model_name="scale")
            tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
            tensor.contents.fp32_contents.extend(X.reshape(-1).tolist())
            with pytest.raises(grpc.RpcError) as info:
                infer(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as info:
                infer(request, timeout=10, metadata=[("authorization", "Bearer shp_x")])
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            denied = [("authorization", f"Bearer {secrets['meta-scale']}")]
            with pytest.raises(grpc.RpcError) as info:
                infer(request, timeout=10, metadata=denied)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            allowed = [("authorization", f"Bearer {secrets['infer-scale']}")]
            reply = infer(request, timeout=10, metadata=allowed)
            assert reply.model_name == "scale"


# -- CLI ----------------------------------------------------------------------------------


def test_serve_flags_map_onto_settings(tmp_path: Path) -> None:
    from shipyard.cli import build_parser
    from shipyard.cli.serve import settings_from

    flags = {
        "--auth": "tokens.json",
        "--tls-cert": "cert.pem",
        "--tls-key": "key.pem",
        "--pub": "keys/signing.pub",
        "--key-file": "keys/data.key",
        "--audit-log": "audit.jsonl",
        "--audit-key-file": "keys/audit.key",
    }
    argv = ["serve", str(tmp_path), "--insecure", "--require-signature"]
    for flag, value in flags.items():
        argv += [flag, value]
    settings = settings_from(build_parser().parse_args(argv), tmp_path)
    assert settings.auth == Path("tokens.json") and settings.insecure
    assert (settings.tls_cert, settings.tls_key) == (Path("cert.pem"), Path("key.pem"))
    assert settings.require_signature and settings.public_key == Path("keys/signing.pub")
    assert settings.key_file == Path("keys/data.key")
    assert settings.audit_log == Path("audit.jsonl")
    assert settings.audit_key_file == Path("keys/audit.key")
    plain = settings_from(build_parser().parse_args(["serve", str(tmp_path)]), tmp_path)
    assert plain.auth is None and not plain.insecure and not plain.require_signature


def test_serve_refuses_an_exposed_address_before_announcing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shipyard.cli import main

    assert main(["serve", str(tmp_path), "--host", "0.0.0.0", "--port", "0"]) == 2  # usage error
    err = capsys.readouterr().err
    assert "--insecure" in err and "serving" not in err


def _expire(path: Path, name: str) -> None:
    import json

    doc = json.loads(path.read_text())
    for record in doc["tokens"]:
        if record["name"] == name:
            past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            record["expires"] = past.isoformat()
    path.write_text(json.dumps(doc))


async def test_broken_token_file_makes_ready_503_with_the_reason(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[..., Any],
    tokens: tuple[Path, dict[str, str]],
) -> None:
    """Every call was a 503 while /v2/health/ready stayed 200."""
    pack()
    path, secrets = tokens
    async with app_client(settings_for(repo, auth=path)) as client:
        assert (await client.get("/v2/health/ready")).status_code == 200
        good = path.read_text()
        path.write_text("{]")
        response = await client.get("/v2/health/ready")
        assert response.status_code == 503 and response.json()["ready"] is False
        assert "not a valid Shipyard token file" in response.json()["error"]
        infer = await client.post(
            "/v2/models/scale/infer", content=INFER_BODY, headers=bearer(secrets["infer-scale"])
        )
        assert infer.status_code == 503
        path.write_text(good)
        path.chmod(0o644)
        response = await client.get("/v2/health/ready")
        assert response.status_code == 503 and "chmod 600" in response.json()["error"]
        path.chmod(0o600)
        assert (await client.get("/v2/health/ready")).status_code == 200


def test_serve_refuses_open_token_and_key_files(
    repo: Path, pack: Callable[..., Path], tokens: tuple[Path, dict[str, str]], keys: KeyPaths
) -> None:
    from shipyard.cli import main

    pack()
    path, _ = tokens
    path.chmod(0o622)  # writable by group and others: anyone could add a token
    args = ["serve", str(repo), "--port", "0", "--auth", str(path)]
    assert main(args) == 2
    path.chmod(0o600)
    keys.data_key.chmod(0o644)
    assert main([*args, "--key-file", str(keys.data_key)]) == 2


async def test_offline_revocation_is_audited_when_the_server_rereads(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[..., Any],
    tokens: tuple[Path, dict[str, str]],
    keys: KeyPaths,
    tmp_path: Path,
) -> None:
    import json

    pack()
    path, secrets = tokens
    log = tmp_path / "audit.jsonl"
    settings = settings_for(repo, auth=path, audit_log=log, audit_key_file=keys.audit_key)
    async with app_client(settings) as client:
        headers = bearer(secrets["infer-scale"])
        url = "/v2/models/scale/infer"
        assert (await client.post(url, content=INFER_BODY, headers=headers)).is_success
        TokenStore(path).revoke("infer-scale", by="alice")  # offline, as the CLI does it
        assert (await client.post(url, content=INFER_BODY, headers=headers)).status_code == 401
    records = [json.loads(line) for line in log.read_text().splitlines()]
    (revoke,) = [r for r in records if r["event"] == "token.revoke"]
    assert revoke["who"] == "alice" and "'infer-scale'" in revoke["detail"]
