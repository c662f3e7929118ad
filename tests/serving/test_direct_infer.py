"""V2 inference answered straight from the protocol (`http.direct`) answers as the ASGI app does.

Two real servers on the same repository, with auth and an audit log: the default one,
where the guarded protocol answers inference itself, and one with the access log on,
where the ASGI app does (the direct path is off there). The same requests, good and bad,
over httpx and raw sockets, get byte-identical answers (status, headers, body; the date
aside), and the audit log records the same calls; the first server's inference went
through the direct path and the second's did not.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shipyard.codecs import encode_request
from shipyard.security.audit_chain import verify_log
from shipyard.security.keys import init_keys, read_secret
from shipyard.security.tokens import TokenStore
from shipyard.serving.http.direct import DirectInfer
from shipyard.serving.server import start_in_thread
from shipyard.serving.settings import ServerSettings

X = np.arange(8, dtype=np.float32).reshape(2, 4)
JSON = encode_request({"x": X})[0]
BINARY, HEADER_LENGTH = encode_request({"x": X}, binary_inputs=True, binary_outputs=True)
URL = "/v2/models/scale/infer"

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SHIPYARD_KEK", "SHIPYARD_AUDIT_KEY", "SHIPYARD_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The request ids DirectInfer.serve answered, in order."""
    seen: list[str] = []
    original = DirectInfer.serve

    async def spy(self: DirectInfer, cycle: Any) -> None:
        seen.append(dict(cycle.scope["headers"]).get(b"x-request-id", b"").decode())
        await original(self, cycle)

    monkeypatch.setattr(DirectInfer, "serve", spy)
    return seen


def cases(secrets: dict[str, str]) -> list[tuple[str, str, bytes, dict[str, str]]]:
    alice = {"Authorization": f"Bearer {secrets['alice']}"}
    viewer = {"Authorization": f"Bearer {secrets['viewer']}"}
    binary = {**alice, "Inference-Header-Content-Length": str(HEADER_LENGTH)}
    return [
        ("json", URL, JSON, alice),
        ("version", "/v2/models/scale/versions/1/infer", JSON, alice),
        ("binary", URL, BINARY, binary),
        ("gzip-in", URL, gzip.compress(JSON), {**alice, "Content-Encoding": "gzip"}),
        ("gzip-out", URL, JSON, {**alice, "Accept-Encoding": "gzip"}),
        ("no-token", URL, JSON, {}),
        ("bad-token", URL, JSON, {"Authorization": "Bearer nope"}),
        ("wrong-scope", URL, JSON, viewer),
        ("other-model", "/v2/models/other/infer", JSON, alice),
        ("no-version", "/v2/models/scale/versions/9/infer", JSON, alice),
        ("bad-json", URL, JSON[:-3], alice),
        ("bad-shape", URL, JSON.replace(b"[2,4]", b"[2,5]").replace(b"[2, 4]", b"[2, 5]"), alice),
        ("empty", URL, b"", alice),
        ("bad-encoding", URL, JSON, {**alice, "Content-Encoding": "br"}),
        ("bad-gzip", URL, b"not gzip", {**alice, "Content-Encoding": "gzip"}),
        ("bad-length", URL, BINARY, {**binary, "Inference-Header-Content-Length": "x"}),
        ("long-length", URL, BINARY, {**binary, "Inference-Header-Content-Length": "99999"}),
        ("request-id", URL, JSON, {**alice, "X-Request-ID": "r" * 80}),
    ]


def raw_requests(secret: str) -> list[bytes]:
    head = (
        f"POST {URL} HTTP/1.1\r\nHost: x\r\nX-Request-ID: raw\r\nAuthorization: Bearer {secret}\r\n"
    )
    full = head.encode() + b"Content-Length: %d\r\n\r\n" % len(JSON) + JSON
    return [
        head.encode() + b"Content-Length: 999999999999\r\n\r\n",  # over the limit: 413, unread
        head.encode() + b"Content-Length: 12x\r\n\r\n",  # not a number: the parser's 400
        full + full,  # pipelined: answered in order
        head.encode() + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(JSON) + JSON,
        full.replace(b"HTTP/1.1", b"HTTP/1.0", 1),  # closed after its answer
        # the body only after "100 Continue" (split off below)
        head.encode() + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(JSON),
    ]


def answers(base: str, secrets: dict[str, str]) -> dict[str, Answer]:
    out: dict[str, Answer] = {}
    with httpx.Client(base_url=base, timeout=10, trust_env=False) as client:
        for name, path, body, headers in cases(secrets):
            sent = {"X-Request-ID": name, **headers}
            response = client.post(path, content=body, headers=sent)
            raw = [(k.lower(), v) for k, v in response.headers.raw if k.lower() != b"date"]
            out[name] = (response.status_code, raw, response.content)
    host, port = base.removeprefix("http://").rsplit(":", 1)
    for i, data in enumerate(raw_requests(secrets["alice"])):
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(data)
            received = b""
            if b"100-continue" in data:
                received = conn.recv(65536)
                conn.sendall(JSON)
            received += _read_until_quiet(conn)
        lines = [line for line in received.split(b"\r\n") if not line.startswith(b"date:")]
        out[f"raw-{i}"] = (0, [], b"\r\n".join(lines))
    return out


def _read_until_quiet(conn: socket.socket) -> bytes:
    conn.settimeout(0.5)
    chunks = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def audited_calls(log: Path) -> list[tuple[Any, ...]]:
    keep = ("event", "who", "model", "version", "outcome", "request_id", "bytes_in", "bytes_out")
    return [
        tuple(r.get(k) for k in keep)
        for r in map(json.loads, log.read_text().splitlines())
        if r["event"] in ("infer", "auth.denied")
    ]


def test_direct_inference_answers_as_the_asgi_app_does(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    tmp_path: Path,
    served: list[str],
) -> None:
    pack()
    store = TokenStore(tmp_path / "tokens.json")
    secrets = {
        "alice": store.create("alice", ["infer:scale"]),
        "viewer": store.create("viewer", ["metadata:*"]),
    }
    keys = init_keys(tmp_path / "keys")
    results, logs = [], []
    for access_log in (False, True):
        log = tmp_path / f"audit-{access_log}" / "audit.jsonl"
        settings = settings_for(
            repo,
            auth=store.path,
            audit_log=log,
            audit_key_file=keys.audit_key,
            access_log=access_log,
        )
        with start_in_thread(settings=settings) as server:
            results.append(answers(server.url, secrets))
        logs.append(log)
        if not access_log:
            # every infer request went the direct way: the raw ones but the parser's 400,
            # the pipelined pair twice
            assert len(served) == len(cases(secrets)) + 6
            served.clear()
    assert served == []  # with the access log on, the ASGI app answered everything

    direct, asgi = results
    assert direct.keys() == asgi.keys()
    for name in direct:
        assert direct[name] == asgi[name], name
    status = {name: answer[0] for name, answer in direct.items()}
    assert status["json"] == status["binary"] == status["gzip-out"] == 200
    assert (status["no-token"], status["wrong-scope"], status["bad-json"]) == (401, 403, 400)
    assert direct["json"][1][-1] == (b"x-request-id", b"json")
    assert direct["request-id"][1][-1] == (b"x-request-id", b"r" * 64)
    assert direct["raw-0"][2].startswith(b"HTTP/1.1 413 ")
    assert direct["raw-2"][2].count(b"HTTP/1.1 200 OK") == 2
    assert b"connection: close" in direct["raw-3"][2]
    assert (
        direct["raw-4"][2].startswith(b"HTTP/1.1 200 ")
        and b"connection: close" in direct["raw-4"][2]
    )
    assert direct["raw-5"][2].startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")

    calls = [audited_calls(log) for log in logs]
    assert calls[0] == calls[1]
    assert len([c for c in calls[0] if c[0] == "infer"]) >= 10
    for log in logs:
        assert verify_log(log, read_secret(keys.audit_key)).ok
