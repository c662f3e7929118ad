"""Start-up failures are one line naming the file or port, fast, before any model loads."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shipyard.serving.server import exposure_warning
from shipyard.serving.settings import load_settings
from tests.faults._cli_server import affine_repo, cli, cli_server


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return affine_repo(tmp_path / "models")


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _serve(*args: str, timeout_s: float = 30) -> tuple[int, list[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        cli("serve", *args, "--poll-interval", "0"),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return done.returncode, done.stderr.strip().splitlines(), time.monotonic() - started


def _writable(path: Path) -> bool:
    try:
        with open(path, "ab"):
            pass
    except OSError:
        return False
    path.unlink()
    return True


def _one_line_error(lines: list[str]) -> str:
    """The failure: the last line, and no traceback anywhere."""
    assert lines, "no output"
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    return lines[-1]


def test_a_taken_http_port_fails_at_once_before_models_load(models: Path, taken_port: int) -> None:
    rc, lines, elapsed = _serve(str(models), "--port", str(taken_port))
    assert rc == 1
    assert _one_line_error(lines) == (
        f"error: port {taken_port} on 127.0.0.1 is in use; stop the other server or pass --port"
    )
    assert not any("loading affine" in line for line in lines)
    assert elapsed < 10  # the interpreter start; no model was loaded


def test_a_taken_grpc_port_fails_before_models_load(models: Path, taken_port: int) -> None:
    rc, lines, _ = _serve(str(models), "--port", "0", "--grpc-port", str(taken_port))
    assert rc == 1
    line = _one_line_error(lines)
    assert f"127.0.0.1:{taken_port}" in line and "gRPC" in line
    assert not any("loading affine" in line for line in lines)


def test_a_missing_certificate_is_named(models: Path, tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("x")
    rc, lines, _ = _serve(
        str(models), "--port", "0", "--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(key)
    )
    assert rc == 1
    assert _one_line_error(lines) == (
        f"error: {tmp_path / 'nope.pem'}: TLS certificate file not found; pass an existing PEM "
        "file to --tls-cert"
    )


@pytest.mark.parametrize("broken", ["cert", "key"])
def test_a_bad_tls_file_is_one_line_naming_it(models: Path, tmp_path: Path, broken: str) -> None:
    from tests.serving.test_auth import _self_signed

    cert, key = _self_signed(tmp_path)
    bad = cert if broken == "cert" else key
    bad.write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    rc, lines, _ = _serve(
        str(models), "--port", "0", "--tls-cert", str(cert), "--tls-key", str(key)
    )
    assert rc == 1
    line = _one_line_error(lines)
    assert line.startswith("error: ") and str(bad) in line
    assert not any("loading affine" in line for line in lines)


def test_a_read_only_audit_folder_is_one_line(models: Path, tmp_path: Path) -> None:
    from shipyard.security.keys import init_keys

    keys = init_keys(tmp_path / "keys")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    audit = folder / "audit.log"
    if _writable(audit):  # root ignores modes: use a folder no one may write
        audit = Path("/sys/shipyard-audit.log")
        if _writable(audit):
            pytest.skip("no read-only folder available")
    try:
        rc, lines, _ = _serve(
            str(models),
            "--port",
            "0",
            "--audit-log",
            str(audit),
            "--audit-key-file",
            str(keys.audit_key),
        )
    finally:
        folder.chmod(0o700)
    assert rc == 1
    line = _one_line_error(lines)
    assert line.startswith(f"error: {audit}: cannot write the audit log")
    assert not any("loading affine" in line for line in lines)


def test_json_logs_report_a_start_up_failure_as_json(models: Path, taken_port: int) -> None:
    rc, lines, _ = _serve(str(models), "--port", str(taken_port), "--log-format", "json")
    assert rc == 1
    docs = [json.loads(line) for line in lines]  # every line, the failure too
    assert docs[-1]["level"] == "error"
    assert "is in use" in docs[-1]["message"]


def test_json_logs_are_json_from_the_first_line_with_structured_access(models: Path) -> None:
    with cli_server(models, "--log-format", "json", env={"SHIPYARD_ACCESS_LOG": "true"}) as server:
        response = httpx.get(
            f"{server.url}/v2/models/affine", headers={"X-Request-ID": "probe-1"}, timeout=5
        )
        assert response.status_code == 200
        line = server.wait_for_line('"request_id":"probe-1"')
    docs = [json.loads(line) for line in server.lines]
    assert docs[0]["message"].startswith("serving ")
    access = json.loads(line)
    assert access["logger"] == "shipyard.serving.access"
    assert access["method"] == "GET" and access["path"] == "/v2/models/affine"
    assert access["status"] == 200 and access["duration_ms"] >= 0
    assert access["client"].startswith("127.0.0.1:")
    assert not any("color_message" in doc for doc in docs)


@pytest.mark.parametrize("trusted", [None, '["127.0.0.1"]'])
def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(
    models: Path, trusted: str | None
) -> None:
    """By default a local client cannot pick the address it is logged (and audited) with."""
    env = {"SHIPYARD_ACCESS_LOG": "true"}
    if trusted is not None:
        env["SHIPYARD_HTTP__TRUSTED_PROXIES"] = trusted
    with cli_server(models, "--log-format", "json", env=env) as server:
        response = httpx.get(
            f"{server.url}/v2/models/affine",
            headers={"X-Request-ID": "fwd-1", "X-Forwarded-For": "203.0.113.9"},
            timeout=5,
        )
        assert response.status_code == 200
        access = json.loads(server.wait_for_line('"request_id":"fwd-1"'))
    if trusted is None:
        assert access["client"].startswith("127.0.0.1:")
    else:
        assert access["client"].startswith("203.0.113.9:")


def test_auth_without_tls_on_a_public_address_warns(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    public = load_settings(host="0.0.0.0", auth=tokens)
    warning = exposure_warning(public)
    assert warning is not None
    assert "0.0.0.0" in warning and "tokens travel in clear text" in warning
    assert "TLS proxy in front" in warning
    assert exposure_warning(load_settings(host="127.0.0.1", auth=tokens)) is None
    assert exposure_warning(load_settings(host="0.0.0.0", insecure=True)) is None
