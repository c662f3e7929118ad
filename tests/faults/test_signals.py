"""SIGHUP never kills `shipyard serve`: it rescans the repository and re-reads the token file."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

import shipyard
from shipyard.security.keys import init_keys
from shipyard.security.tokens import TokenStore
from tests.conftest import make_affine_onnx
from tests.faults._cli_server import affine_repo, cli_server


@pytest.mark.timeout(90)
def test_sighup_reloads_and_keeps_serving_then_sigterm_stops(tmp_path: Path) -> None:
    repo = affine_repo(tmp_path / "models")
    keys = init_keys(tmp_path / "keys")
    tokens = TokenStore(tmp_path / "tokens.json")
    admin = tokens.create("ops", ["admin:*"])
    audit = tmp_path / "audit" / "audit.log"
    audit.parent.mkdir()
    with cli_server(
        repo,
        "--log-format",
        "json",
        "--auth",
        str(tmp_path / "tokens.json"),
        "--audit-log",
        str(audit),
        "--audit-key-file",
        str(keys.audit_key),
    ) as server:
        auth = {"Authorization": f"Bearer {admin}"}
        with httpx.Client(base_url=server.url, timeout=5, headers=auth) as client:
            assert client.get("/v2/models/affine").status_code == 200
            # a second model appears and a second token is added; SIGHUP picks both up
            shipyard.pack(make_affine_onnx(), name="affine2", repo=repo)
            late = tokens.create("late", ["metadata:*"])
            server.proc.send_signal(signal.SIGHUP)
            server.wait_for_line("reloaded on SIGHUP", timeout_s=15)
            assert server.proc.poll() is None
            assert client.get("/v2/health/live").status_code == 200
            assert client.get("/v2/models/affine2/ready").status_code == 200
            extra = {"Authorization": f"Bearer {late}"}
            assert client.get("/v2/models/affine", headers=extra).status_code == 200
            for _ in range(3):  # repeated SIGHUPs: still no exit
                server.proc.send_signal(signal.SIGHUP)
                time.sleep(0.2)
            assert client.get("/v2/health/ready").status_code == 200
        rc = server.stop()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it (so the exit is "by SIGTERM")
    assert rc in (0, -signal.SIGTERM), rc
    lines = [json.loads(line) for line in server.lines]  # every line is JSON
    messages = [line["message"] for line in lines]
    assert any(m.startswith("SIGHUP received: rescanning") for m in messages)
    assert "Finished server process" in " ".join(messages)
    events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
    assert "server.reload" in events
    assert events[-1] == "server.stop"
