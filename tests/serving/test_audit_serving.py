"""The serving audit trail: one chained record per security event, none lost, none payload."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shipyard.codecs import encode_request
from shipyard.codecs.types import InferenceRequest
from shipyard.security.audit_chain import verify_log
from shipyard.security.errors import KeyFileError
from shipyard.security.keys import KeyPaths, init_keys, read_secret
from shipyard.security.tokens import TokenStore
from shipyard.serving.audit_trail import AuditWriter, outcome_of
from shipyard.serving.server import start_in_thread
from shipyard.serving.settings import ServerSettings

pytestmark = pytest.mark.anyio

MARKER = 12345.6875  # exactly representable: would appear verbatim if a payload leaked
X = np.full((2, 4), MARKER, dtype=np.float32)
BODY = encode_request({"x": X})[0]


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SHIPYARD_KEK", "SHIPYARD_AUDIT_KEY", "SHIPYARD_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def keys(tmp_path: Path) -> KeyPaths:
    return init_keys(tmp_path / "keys")


@pytest.fixture
def secured(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    keys: KeyPaths,
    tmp_path: Path,
) -> tuple[ServerSettings, dict[str, str], Path]:
    """(settings with auth and an audit log, token secrets by name, audit log path)."""
    pack()
    store = TokenStore(tmp_path / "tokens.json")
    secrets = {
        "alice": store.create("alice", ["infer:scale"]),
        "ops": store.create("ops", ["admin:*"]),
    }
    log = tmp_path / "audit" / "audit.jsonl"
    settings = settings_for(repo, auth=store.path, audit_log=log, audit_key_file=keys.audit_key)
    return settings, secrets, log


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_each_event_class_is_recorded_and_the_chain_verifies(
    secured: tuple[ServerSettings, dict[str, str], Path],
    app_client: Callable[..., Any],
    keys: KeyPaths,
    repo: Path,
) -> None:
    settings, secrets, log = secured
    async with app_client(settings) as client:
        url = "/v2/models/scale/infer"
        assert (await client.post(url, content=BODY)).status_code == 401
        forbidden = await client.get("/v2/models/scale", headers=bearer(secrets["alice"]))
        assert forbidden.status_code == 403
        ok = await client.post(
            url, content=BODY, headers={**bearer(secrets["alice"]), "X-Request-ID": "req-1"}
        )
        assert ok.status_code == 200
        bad = await client.post(url, content=b'{"inputs": []}', headers=bearer(secrets["alice"]))
        assert bad.status_code == 400
        (repo / "scale" / "model.toml").write_text("warmup = false\n")  # config change: reload
        admin = bearer(secrets["ops"])
        assert (await client.post("/v2/repository/models/scale/load", headers=admin)).is_success
        assert (await client.post("/v2/repository/models/scale/unload", headers=admin)).is_success
        assert (await client.post("/v2/repository/models/scale/load", headers=admin)).is_success
        # a call through the data plane alone, as the gRPC transport makes it
        server = client.server  # type: ignore[attr-defined]
        await server.dataplane.infer("scale", InferenceRequest({"x": X}), protocol="v2_grpc")
        server.security.audit.flush()
        written = records(log)
        assert [r["event"] for r in written][:2] == ["server.start", "model.load"]
    written = records(log)
    assert written[-1]["event"] == "server.stop"
    assert written[-2]["event"] == "model.unload" and written[-2]["who"] == "server"
    events = [r["event"] for r in written]

    startup = written[1]
    assert (startup["who"], startup["model"], startup["version"]) == ("server", "scale", 1)

    denied = [r for r in written if r["event"] == "auth.denied"]
    assert [(r["who"], r["outcome"]) for r in denied] == [
        ("anonymous", "unauthenticated"),
        ("alice", "forbidden"),
    ]
    assert denied[0]["detail"].startswith("POST /v2/models/scale/infer from 127.0.0.1:")
    assert "GET /v2/models/scale" in denied[1]["detail"] and denied[1]["model"] == "scale"

    infers = [r for r in written if r["event"] == "infer"]
    assert len(infers) == 3  # the two 401/403s are auth.denied records only
    good = infers[0]
    assert good["who"] == "alice" and good["model"] == "scale" and good["version"] == "1"
    assert good["outcome"] == "ok" and good["request_id"] == "req-1"
    assert good["bytes_in"] == len(BODY) and good["bytes_out"] > 0
    assert good["latency_ms"] >= 0 and good["detail"] == "POST /v2/models/scale/infer"
    assert infers[1]["outcome"] == "invalid" and infers[1]["who"] == "alice"
    grpc_like = infers[2]
    assert grpc_like["detail"] == "v2_grpc" and grpc_like["version"] == "1"
    assert grpc_like["outcome"] == "ok" and grpc_like["who"] == "anonymous"

    admin = [(r["detail"], r["who"], r["outcome"]) for r in written if r["event"] == "admin"]
    assert admin == [
        ("POST /v2/repository/models/scale/load", "ops", "ok"),
        ("POST /v2/repository/models/scale/unload", "ops", "ok"),
        ("POST /v2/repository/models/scale/load", "ops", "ok"),
    ]
    lifecycle = [(r["event"], r["who"]) for r in written if r["event"].startswith("model.")]
    assert lifecycle == [
        ("model.load", "server"),
        ("model.reload", "ops"),
        ("model.unload", "ops"),
        ("model.load", "ops"),
        ("model.unload", "server"),
    ]
    assert "unloaded by request" in next(
        r["detail"] for r in written if r["event"] == "model.unload"
    )
    assert events.count("server.start") == 1

    text = log.read_text()
    assert str(MARKER) not in text and "12345" not in text  # never a payload
    result = verify_log(log, read_secret(keys.audit_key))
    assert result.ok and result.records == len(written)


async def test_failed_loads_are_recorded(
    secured: tuple[ServerSettings, dict[str, str], Path],
    app_client: Callable[..., Any],
    pack: Callable[..., Path],
    corrupt_copy: Callable[[Path, Path], None],
    repo: Path,
) -> None:
    settings, secrets, log = secured
    corrupt_copy(repo / "scale" / "1", repo / "scale" / "2")
    async with app_client(settings) as client:
        response = await client.post(
            "/v2/repository/models/scale/load", headers=bearer(secrets["ops"])
        )
        # the newest version was refused: the load says so (version 1 still serves)
        assert response.status_code == 400
        assert "still serving version(s) 1" in response.json()["error"]
    failed = [r for r in records(log) if r.get("outcome") == "failed"]
    assert failed and all(r["event"] == "model.load" and r["version"] == 2 for r in failed)
    assert "scale/2" in failed[0]["detail"]


def test_records_survive_a_restart_and_the_chain_continues(
    secured: tuple[ServerSettings, dict[str, str], Path], keys: KeyPaths
) -> None:
    settings, secrets, log = secured
    counts = []
    for _ in range(2):
        with (
            start_in_thread(settings=settings) as server,
            httpx.Client(base_url=server.url, timeout=10) as client,
        ):
            response = client.post(
                "/v2/models/scale/infer", content=BODY, headers=bearer(secrets["alice"])
            )
            assert response.status_code == 200
            assert client.post("/v2/models/scale/infer", content=BODY).status_code == 401
        assert not server.running
        counts.append(len(records(log)))
    written = records(log)
    assert counts[1] == 2 * counts[0]  # nothing lost on either shutdown
    assert [r["seq"] for r in written] == list(range(1, len(written) + 1))
    second_start = written[counts[0]]
    assert second_start["event"] == "server.start"
    assert second_start["prev"] == written[counts[0] - 1]["hmac"]
    result = verify_log(log, read_secret(keys.audit_key))
    assert result.ok and result.records == len(written)


def test_grpc_calls_are_audited(
    secured: tuple[ServerSettings, dict[str, str], Path], keys: KeyPaths
) -> None:
    import grpc

    from shipyard.codecs.proto import grpc_service_pb2 as pb

    settings, secrets, log = secured
    with start_in_thread(settings=settings.model_copy(update={"grpc_port": 0})) as server:
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
            infer(request, timeout=10, metadata=[("authorization", f"Bearer {secrets['alice']}")])
            with pytest.raises(grpc.RpcError):
                infer(request, timeout=10)
    written = records(log)
    infers = [r for r in written if r["event"] == "infer"]
    assert [(r["who"], r["outcome"]) for r in infers] == [("alice", "ok")]
    assert infers[0]["detail"].startswith("v2_grpc from 127.0.0.1:")  # the gRPC peer
    assert infers[0]["version"] == "1"
    denied = [r for r in written if r["event"] == "auth.denied"]
    assert len(denied) == 1 and denied[0]["detail"].startswith("grpc ModelInfer from 127.0.0.1:")
    assert str(MARKER) not in log.read_text()
    assert verify_log(log, read_secret(keys.audit_key)).ok


def test_writer_flushes_on_close_and_never_blocks_forever(tmp_path: Path) -> None:
    key = b"k" * 32
    writer = AuditWriter(tmp_path / "a.jsonl", key)
    writer.start()
    for n in range(500):
        writer.submit("infer", who="t", model="m", outcome="ok", bytes_in=n)
    writer.close()
    assert len(records(tmp_path / "a.jsonl")) == 500
    assert verify_log(tmp_path / "a.jsonl", key).ok

    stalled = AuditWriter(tmp_path / "b.jsonl", key, queue_size=1)
    stalled.submit("x")  # not started: the backlog is past its bound
    started = time.perf_counter()
    stalled.submit("y")  # neither blocks nor drops: the bound is for audited calls to wait on
    assert stalled.pending == 2 and time.perf_counter() - started < 2
    stalled.start()
    stalled.close()
    assert [r["event"] for r in records(tmp_path / "b.jsonl")] == ["x", "y"]


def test_writer_runs_off_the_calling_thread(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path / "a.jsonl", b"k" * 32)
    writer.start()
    seen: list[str] = []
    original = writer._log.record  # type: ignore[union-attr]

    def spy(*args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.append(threading.current_thread().name)
        return original(*args, **kwargs)

    writer._log.record = spy  # type: ignore[method-assign,union-attr]
    writer.submit("infer")
    writer.close()
    assert seen == ["shipyard-audit"]


def test_audit_key_is_required_and_separate_from_the_kek(
    repo: Path, settings_for: Callable[..., ServerSettings], keys: KeyPaths, tmp_path: Path
) -> None:
    from shipyard.serving.lifecycle import Server

    log = tmp_path / "audit.jsonl"
    with pytest.raises(KeyFileError, match="--audit-key-file"):
        Server(settings_for(repo, audit_log=log))
    with pytest.raises(KeyFileError, match="separate audit key"):
        Server(
            settings_for(repo, audit_log=log, audit_key_file=keys.data_key, key_file=keys.data_key)
        )


async def test_audit_key_from_the_environment(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[..., Any],
    keys: KeyPaths,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pack()
    monkeypatch.setenv("SHIPYARD_AUDIT_KEY", keys.audit_key.read_text().strip())
    log = tmp_path / "audit.jsonl"
    async with app_client(settings_for(repo, audit_log=log)) as client:
        assert (await client.post("/v2/models/scale/infer", content=BODY)).status_code == 200
    infer = next(r for r in records(log) if r["event"] == "infer")
    assert infer["who"] == "anonymous" and infer["outcome"] == "ok"  # no auth: anonymous
    assert verify_log(log, read_secret(keys.audit_key)).ok


def test_outcomes() -> None:
    assert [outcome_of(s) for s in (200, 400, 401, 403, 404, 405, 413, 500, 503)] == [
        "ok",
        "invalid",
        "unauthenticated",
        "forbidden",
        "not_found",
        "invalid",
        "too_large",
        "error",
        "unavailable",
    ]
