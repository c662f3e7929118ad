"""V2 over gRPC: a real server on free ports, driven by the unmodified tritonclient.grpc."""

from __future__ import annotations

import asyncio
import queue
import socket
from collections.abc import Callable, Iterator, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.service_pb2 as triton_pb
from google.protobuf.descriptor import Descriptor
from tests.serving.conftest import GRAPHS
from tritonclient.utils import InferenceServerException

import shipyard
from shipyard.codecs.proto import grpc_service_pb2 as pb
from shipyard.errors import ShipyardError
from shipyard.package.dtypes import DTYPES
from shipyard.serving.errors import Overloaded
from shipyard.serving.grpc import listener, v2
from shipyard.serving.lifecycle import Server
from shipyard.serving.server import RunningServer, start_in_thread
from shipyard.serving.settings import ServerSettings, load_settings

DATATYPES = [d.v2 for d in DTYPES]  # every V2 datatype ONNX has
X = np.arange(12, dtype=np.float32).reshape(3, 4)


def _settings(repo: Path, **overrides: Any) -> ServerSettings:
    overrides = {"port": 0, "grpc_port": 0, "poll_interval_s": 0, **overrides}
    return load_settings(repository=repo, **overrides)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the read-only tests (scale and identity); repository tests get their own."""
    repo = tmp_path_factory.mktemp("grpc") / "models"
    for kind in ("scale", "identity"):
        shipyard.pack(GRAPHS[kind](), name=kind, repo=repo)
    with start_in_thread(settings=_settings(repo)) as running:
        yield running
    assert not running.running


@pytest.fixture
def client(server: RunningServer) -> Iterator[triton.InferenceServerClient]:
    assert server.grpc_port
    client = triton.InferenceServerClient(f"{server.host}:{server.grpc_port}")
    yield client
    client.close()


def _input(name: str, value: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return tensor


def _raises(code: grpc.StatusCode, call: Callable[[], Any]) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == str(code), info.value.message()
    return str(info.value.message())


# -- the proto -----------------------------------------------------------------------------


def _fields(message: Descriptor) -> dict[int, tuple[str, int, bool, str]]:
    return {
        f.number: (f.name, f.type, f.is_repeated, f.message_type.name if f.message_type else "")
        for f in message.fields
    }


def _check_same(ours: Descriptor, theirs: Descriptor) -> None:
    assert ours.name == theirs.name
    assert _fields(ours) == _fields(theirs), ours.full_name
    for nested in ours.nested_types:
        _check_same(nested, theirs.nested_types_by_name[nested.name])


def test_proto_matches_tritons_wire_format() -> None:
    for name, message in pb.DESCRIPTOR.message_types_by_name.items():
        _check_same(message, triton_pb.DESCRIPTOR.message_types_by_name[name])
    theirs = triton_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert theirs.full_name == v2.SERVICE
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.name, method.output_type.name) == (
            other.input_type.name,
            other.output_type.name,
        )
        assert (method.client_streaming, method.server_streaming) == (
            other.client_streaming,
            other.server_streaming,
        )


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (401, grpc.StatusCode.UNAUTHENTICATED),
        (403, grpc.StatusCode.PERMISSION_DENIED),
        (404, grpc.StatusCode.NOT_FOUND),
        (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (422, grpc.StatusCode.INVALID_ARGUMENT),
        (500, grpc.StatusCode.INTERNAL),
        (503, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_http_status_to_grpc_code(status: int, code: grpc.StatusCode) -> None:
    assert v2.grpc_status(status) == code


# -- health, metadata, inference ------------------------------------------------------------


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("scale")
    assert client.is_model_ready("scale", "1")
    assert not client.is_model_ready("scale", "2")
    assert not client.is_model_ready("nope")
    metadata = client.get_server_metadata()
    assert metadata.name == "shipyard" and "binary_tensor_data" in metadata.extensions
    model = client.get_model_metadata("scale", "1")
    assert (model.name, list(model.versions), model.platform) == ("scale", ["1"], "onnx_onnxv1")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("x", "FP32", [-1, 4])]
    assert [t.name for t in model.outputs] == ["y", "s"]
    message = _raises(grpc.StatusCode.NOT_FOUND, lambda: client.get_model_metadata("nope"))
    assert "nope" in message


def test_infer_every_datatype_raw(
    client: triton.InferenceServerClient, sample_for: Callable[..., np.ndarray]
) -> None:
    inputs, expected = [], {}
    for datatype in DATATYPES:
        value = sample_for(datatype)
        inputs.append(_input(f"in_{datatype}", value, datatype))
        expected[f"out_{datatype}"] = value
    result = client.infer("identity", inputs, request_id="grpc-1")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (
        "identity",
        "1",
        "grpc-1",
    )
    for name, value in expected.items():
        got = result.as_numpy(name)
        if value.dtype == object:
            assert [v.decode() for v in got.reshape(-1)] == value.reshape(-1).tolist()
        else:
            assert got.dtype == value.dtype
            np.testing.assert_array_equal(got, value)


def test_requested_outputs_and_compression(client: triton.InferenceServerClient) -> None:
    result = client.infer(
        "scale",
        [_input("x", X, "FP32")],
        outputs=[triton.InferRequestedOutput("s")],
        compression_algorithm="gzip",
    )
    assert [o.name for o in result.get_response().outputs] == ["s"]
    np.testing.assert_array_equal(result.as_numpy("s"), X.sum(axis=1))
    assert result.as_numpy("y") is None
    message = _raises(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: client.infer(
            "scale", [_input("x", X, "FP32")], outputs=[triton.InferRequestedOutput("z")]
        ),
    )
    assert "z" in message


def test_errors_map_to_grpc_codes(client: triton.InferenceServerClient) -> None:
    wrong = _input("x", np.zeros((2, 3), np.float32), "FP32")
    message = _raises(grpc.StatusCode.INVALID_ARGUMENT, lambda: client.infer("scale", [wrong]))
    assert "shape" in message
    right = _input("x", X, "FP32")
    _raises(grpc.StatusCode.NOT_FOUND, lambda: client.infer("nope", [right]))
    _raises(grpc.StatusCode.NOT_FOUND, lambda: client.infer("scale", [right], model_version="7"))
    _raises(grpc.StatusCode.UNIMPLEMENTED, lambda: client.get_log_settings())


def test_stream_infer_answers_each_request(
    client: triton.InferenceServerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(v2, "STREAM_WINDOW", 2)  # more requests than the window
    replies: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    try:
        for i in range(6):
            client.async_stream_infer("scale", [_input("x", X + i, "FP32")], request_id=str(i))
        client.async_stream_infer("nope", [_input("x", X, "FP32")], request_id="bad")
        got = [replies.get(timeout=20) for _ in range(7)]
    finally:
        client.stop_stream()
    errors = [error for _, error in got if error is not None]
    assert len(errors) == 1 and "nope" in errors[0].message()
    results = {r.get_response().id: r for r, error in got if error is None}
    assert sorted(results) == [str(i) for i in range(6)]
    for i, result in results.items():
        np.testing.assert_array_equal(result.as_numpy("y"), (X + int(i)) * 2)


@pytest.mark.anyio
async def test_overloaded_sends_retry_after() -> None:
    class Context:
        async def abort(self, code: grpc.StatusCode, details: str, trailing: Any) -> None:
            self.args = (code, details, trailing)
            raise grpc.RpcError

    context = Context()
    with pytest.raises(grpc.RpcError):
        await v2.abort(context, Overloaded("m", queue_size=8, retry_after=3))
    code, details, trailing = context.args
    assert code == grpc.StatusCode.UNAVAILABLE and "overloaded" in details
    assert trailing == (("retry-after", "3"),)


def test_statistics(client: triton.InferenceServerClient) -> None:
    client.infer("scale", [_input("x", X, "FP32")])
    stats = client.get_inference_statistics("scale", "1").model_stats
    assert stats[0].name == "scale" and stats[0].inference_stats.success.count >= 1
    assert {s.name for s in client.get_inference_statistics().model_stats} >= {"scale"}
    _raises(grpc.StatusCode.NOT_FOUND, lambda: client.get_inference_statistics("nope"))


# -- typed contents (no tritonclient API sends them): our own messages on a plain channel ----


@pytest.fixture
def model_infer(server: RunningServer) -> Iterator[Callable[[pb.ModelInferRequest], Any]]:
    with grpc.insecure_channel(f"{server.host}:{server.grpc_port}") as channel:
        yield channel.unary_unary(
            f"/{v2.SERVICE}/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )


def test_typed_contents_over_the_wire(model_infer: Callable[[pb.ModelInferRequest], Any]) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="x",
        datatype="FP32",
        shape=[3, 4],
        contents=pb.InferTensorContents(fp32_contents=X.ravel().tolist()),
    )
    reply = model_infer(pb.ModelInferRequest(model_name="scale", id="typed", inputs=[tensor]))
    assert reply.id == "typed" and [o.name for o in reply.outputs] == ["y", "s"]
    assert list(reply.outputs[0].shape) == [3, 4] and reply.outputs[0].datatype == "FP32"
    y = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(3, 4)
    np.testing.assert_array_equal(y, X * 2)
    tensor.datatype = "FP16"
    with pytest.raises(grpc.RpcError) as info:
        model_infer(pb.ModelInferRequest(model_name="scale", inputs=[tensor]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents" in info.value.details()


# -- repository, lifecycle, limits, authorization -------------------------------------------


def test_repository_index_load_unload(repo: Path, pack: Callable[..., Path]) -> None:
    pack()
    pack("identity")
    with start_in_thread(settings=_settings(repo)) as running:
        client = triton.InferenceServerClient(f"{running.host}:{running.grpc_port}")
        try:
            index = client.get_model_repository_index().models
            assert {(m.name, m.version, m.state) for m in index} == {
                ("identity", "1", "READY"),
                ("scale", "1", "READY"),
            }
            client.unload_model("identity")
            assert not client.is_model_ready("identity")
            assert client.is_model_ready("scale")
            states = {m.name: m.state for m in client.get_model_repository_index().models}
            assert states["identity"] == "UNAVAILABLE"
            ready = client.get_model_repository_index(as_json=True)
            assert "identity" in str(ready)
            client.load_model("identity")
            assert client.is_model_ready("identity")
            _raises(grpc.StatusCode.NOT_FOUND, lambda: client.load_model("nope"))
            message = _raises(
                grpc.StatusCode.INVALID_ARGUMENT,
                lambda: client.load_model("identity", config='{"backend": "onnxruntime"}'),
            )
            assert "model.toml" in message
        finally:
            client.close()
    assert not running.running
    with pytest.raises(InferenceServerException):
        client = triton.InferenceServerClient(f"{running.host}:{running.grpc_port}")
        try:
            client.is_server_live(client_timeout=2)
        finally:
            client.close()


def test_grpc_is_off_unless_a_port_is_set(repo: Path, pack: Callable[..., Path]) -> None:
    pack()
    settings = load_settings(repository=repo, port=0, poll_interval_s=0)
    with start_in_thread(settings=settings) as running:
        assert running.grpc_port is None


def test_port_in_use_fails_the_start(repo: Path, pack: Callable[..., Path]) -> None:
    pack()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = _settings(repo, grpc_port=port)
        with pytest.raises(ShipyardError, match=rf"gRPC on 127\.0\.0\.1:{port}: .*in use") as info:
            start_in_thread(settings=settings, timeout_s=20)
        assert "\n" not in str(info.value)


@pytest.mark.anyio
async def test_a_second_grpc_server_cannot_share_the_port(
    repo: Path, pack: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """grpc binds with SO_REUSEPORT unless told not to: a second server would share the port."""
    pack()
    monkeypatch.setattr(listener, "check_port_free", lambda host, port: None)  # grpc's bind
    settings = _settings(repo)
    server = Server(settings)
    async with server.app.router.lifespan_context(server.app):
        port = server.grpc_port
        again = settings.model_copy(update={"grpc_port": port})
        with pytest.raises(ShipyardError, match=f"cannot listen for gRPC on 127.0.0.1:{port}"):
            async with listener.GrpcServer(server.dataplane, settings=again):
                pass


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 and localhost, valid for a day."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_settings_secure_grpc_too(
    repo: Path, tmp_path: Path, pack: Callable[..., Path]
) -> None:
    pack()
    cert, key = _self_signed(tmp_path)
    with start_in_thread(settings=_settings(repo, tls_cert=cert, tls_key=key)) as running:
        address = f"{running.host}:{running.grpc_port}"
        secure = triton.InferenceServerClient(address, ssl=True, root_certificates=str(cert))
        plain = triton.InferenceServerClient(address)
        try:
            assert secure.is_server_live()
            result = secure.infer("scale", [_input("x", X, "FP32")])
            np.testing.assert_array_equal(result.as_numpy("y"), X * 2)
            _raises(grpc.StatusCode.UNAVAILABLE, lambda: plain.is_server_live(client_timeout=5))
        finally:
            secure.close()
            plain.close()


class _Unauthenticated(ShipyardError):
    status = HTTPStatus.UNAUTHORIZED


class _Forbidden(ShipyardError):
    status = HTTPStatus.FORBIDDEN


@pytest.mark.anyio
async def test_in_process_authorize_hook_and_size_limit(
    repo: Path, pack: Callable[..., Path]
) -> None:
    pack()
    seen: list[tuple[str, str | None]] = []

    async def authorize(
        metadata: Mapping[str, str], method: str, model: str | None, *, client: str | None
    ) -> str:
        seen.append((method, model))
        assert client and client.startswith("127.0.0.1:")
        if metadata.get("authorization") != "Bearer ok":
            raise _Unauthenticated("send Authorization: Bearer <token>")
        if method.startswith("Repository"):
            raise _Forbidden("this token may not change the repository")
        return "ok-token"

    server = Server(_settings(repo, limits={"max_body_bytes": 4096}))
    assert server.grpc is not None
    server.grpc.authorize = authorize
    async with server.app.router.lifespan_context(server.app):
        port = server.grpc_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:

            def rpc(name: str, response: Any) -> Any:
                return channel.unary_unary(
                    f"/{v2.SERVICE}/{name}",
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=response.FromString,
                )

            ok = (("authorization", "Bearer ok"),)
            ready = rpc("ModelReady", pb.ModelReadyResponse)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ready(pb.ModelReadyRequest(name="scale"))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "Bearer" in (info.value.details() or "")
            assert (await ready(pb.ModelReadyRequest(name="scale"), metadata=ok)).ready
            unload = rpc("RepositoryModelUnload", pb.RepositoryModelUnloadResponse)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await unload(pb.RepositoryModelUnloadRequest(model_name="scale"), metadata=ok)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert seen == [
                ("ModelReady", "scale"),
                ("ModelReady", "scale"),
                ("RepositoryModelUnload", "scale"),
            ]

            infer = rpc("ModelInfer", pb.ModelInferResponse)
            big = np.zeros((400, 4), np.float32)  # 6400 bytes > the 4096-byte limit
            request = pb.ModelInferRequest(model_name="scale", raw_input_contents=[big.tobytes()])
            request.inputs.add(name="x", datatype="FP32", shape=big.shape)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await infer(request, metadata=ok)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert server.grpc_port is None


@pytest.mark.anyio
async def test_stop_lets_in_flight_calls_finish(repo: Path, pack: Callable[..., Path]) -> None:
    pack()
    server = Server(_settings(repo))
    assert server.grpc is not None
    server.grpc.grace_s = 5
    plane = server.dataplane
    started = asyncio.Event()
    infer = plane.infer

    async def slow_infer(*args: Any, **kwargs: Any) -> Any:
        started.set()
        await asyncio.sleep(0.3)
        return await infer(*args, **kwargs)

    plane.infer = slow_infer
    request = pb.ModelInferRequest(model_name="scale", raw_input_contents=[X.tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=X.shape)
    await server.start()
    port = server.grpc_port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            f"/{v2.SERVICE}/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        pending = asyncio.ensure_future(call(request))
        await started.wait()
        await server.stop()  # stops gRPC, then unloads the models
        reply = await pending
        assert (
            np.frombuffer(reply.raw_output_contents[0], "<f4").tolist() == (X * 2).ravel().tolist()
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# -- the gate: auth before the message, peer in the audit log, access log -----------------


def _secured(repo: Path, tmp_path: Path, **overrides: Any) -> tuple[ServerSettings, str, str]:
    """Settings with auth and an audit log; (settings, infer token, metadata-only token)."""
    from shipyard.security.keys import init_keys
    from shipyard.security.tokens import TokenStore

    store = TokenStore(tmp_path / "tokens.json")
    infer = store.create("app", ["infer:scale"])
    viewer = store.create("viewer", ["metadata:scale"])
    keys = init_keys(tmp_path / "keys")
    settings = _settings(
        repo,
        auth=store.path,
        audit_log=tmp_path / "audit.jsonl",
        audit_key_file=keys.audit_key,
        **overrides,
    )
    return settings, infer, viewer


def _audit(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def test_grpc_refusals_and_calls_carry_the_peer_in_the_audit_log(
    repo: Path, tmp_path: Path, pack: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("SHIPYARD_KEK", "SHIPYARD_AUDIT_KEY"):
        monkeypatch.delenv(var, raising=False)
    pack()
    settings, infer_token, viewer_token = _secured(repo, tmp_path)
    with start_in_thread(settings=settings) as running:
        client = triton.InferenceServerClient(f"{running.host}:{running.grpc_port}")
        try:
            inputs = [_input("x", X, "FP32")]
            _raises(grpc.StatusCode.UNAUTHENTICATED, lambda: client.infer("scale", inputs))
            viewer = {"authorization": f"Bearer {viewer_token}"}
            _raises(
                grpc.StatusCode.PERMISSION_DENIED,
                lambda: client.infer("scale", inputs, headers=viewer),
            )
            ok = {"authorization": f"Bearer {infer_token}", "x-request-id": "grpc-rid-1"}
            result = client.infer("scale", inputs, headers=ok)
            np.testing.assert_array_equal(result.as_numpy("y"), X * 2)
            assert client.is_server_live()  # open, no token needed
        finally:
            client.close()
    records = _audit(settings.audit_log)  # type: ignore[arg-type]
    denied = [r for r in records if r["event"] == "auth.denied"]
    assert [r["outcome"] for r in denied] == ["unauthenticated", "forbidden"]
    assert all("grpc ModelInfer from 127.0.0.1:" in r["detail"] for r in denied), denied
    (call,) = [r for r in records if r["event"] == "infer"]
    assert call["who"] == "app" and call["outcome"] == "ok"
    assert call["request_id"] == "grpc-rid-1"
    assert call["detail"].startswith("v2_grpc from 127.0.0.1:")


@pytest.mark.anyio
async def test_access_log_has_one_line_per_grpc_call(
    repo: Path, pack: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    pack()
    server = Server(_settings(repo, access_log=True))
    caplog.set_level("INFO", logger="shipyard.serving.access")
    async with server.app.router.lifespan_context(server.app):
        port = server.grpc_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            infer = channel.unary_unary(
                f"/{v2.SERVICE}/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            request = pb.ModelInferRequest(model_name="scale", raw_input_contents=[X.tobytes()])
            request.inputs.add(name="x", datatype="FP32", shape=X.shape)
            await infer(request, metadata=(("x-request-id", "rid-ok"),))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await infer(pb.ModelInferRequest(model_name="nope"))
    lines = [r for r in caplog.records if r.name == "shipyard.serving.access"]
    assert len(lines) == 2
    first, second = (vars(r) for r in lines)
    assert (first["method"], first["model"], first["code"]) == ("ModelInfer", "scale", "OK")
    assert first["request_id"] == "rid-ok" and len(second["request_id"]) == 16
    assert first["peer"].startswith("127.0.0.1:") and first["duration_ms"] > 0
    assert (second["model"], second["code"]) == ("nope", info.value.code().name)


def test_peer_addresses_read_like_http_clients() -> None:
    from shipyard.serving.grpc.gate import client_address

    assert client_address("ipv4:127.0.0.1:5000") == "127.0.0.1:5000"
    assert client_address("ipv6:[::1]:5000") == "[::1]:5000"
    assert client_address("unix:/tmp/s") == "unix:/tmp/s"
    assert client_address(None) is None
