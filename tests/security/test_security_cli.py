"""The security commands end to end, through the real `shipyard` entry point."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from shipyard.cli import main

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    def invoke(*argv: str) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def test_keys_sign_verify_encrypt_flow(run: Run, version_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "k"
    code, out, _ = run("keys", "init", "--dir", keys, "--json")
    assert code == 0 and json.loads(out)["public_key"] == str(keys / "signing.pub")
    assert run("keys", "init", "--dir", keys)[0] == 2  # usage: the keys exist

    code, out, _ = run("encrypt", version_dir, "--key-file", keys / "data.key", "--json")
    assert code == 0 and json.loads(out)["file"] == "model.onnx.enc"
    assert run("sign", version_dir.parent, "--key", keys / "signing.pem")[0] == 0
    code, out, _ = run("verify", version_dir, "--pub", keys / "signing.pub", "--json")
    assert code == 0 and json.loads(out)["files"] == ["manifest.json", "model.onnx.enc"]

    new_key = tmp_path / "k2"
    run("keys", "init", "--dir", new_key)
    code, _, err = run(
        "keys",
        "rewrap",
        version_dir,
        "--key-file",
        keys / "data.key",
        "--new-key-file",
        new_key / "data.key",
    )
    assert code == 2 and "--remove-signature" in err  # usage: a signed version needs it
    code, out, _ = run(
        "keys",
        "rewrap",
        version_dir,
        "--key-file",
        keys / "data.key",
        "--new-key-file",
        new_key / "data.key",
        "--remove-signature",
    )
    assert code == 0 and "rewrapped" in out
    run("sign", version_dir, "--key", keys / "signing.pem")

    (version_dir / "model.onnx.enc").write_bytes(b"tampered")
    code, _, err = run("verify", version_dir, "--pub", keys / "signing.pub")
    assert code == 1 and "model.onnx.enc" in err


def test_tokens_commands(run: Run, tmp_path: Path) -> None:
    file = tmp_path / "tokens.json"
    code, out, err = run(
        "tokens",
        "--file",
        file,
        "create",
        "--name",
        "ci-bot",
        "--scope",
        "infer:iris",
        "--scope",
        "metadata:*",
        "--expires",
        "30d",
    )
    token = out.strip()
    assert code == 0 and token.startswith("shp_") and "only once" in err
    code, out, _ = run("tokens", "--file", file, "list", "--json")
    listed = json.loads(out)
    assert [t["name"] for t in listed] == ["ci-bot"] and token not in out
    assert listed[0]["scopes"] == ["infer:iris", "metadata:*"] and listed[0]["expires"]
    assert run("tokens", "--file", file, "list")[0] == 0
    assert run("tokens", "revoke", "ci-bot", "--file", file)[0] == 0
    assert run("tokens", "--file", file, "revoke", "ci-bot")[0] == 1
    assert run("tokens", "--file", file, "create", "--name", "x", "--scope", "bad")[0] == 2


def test_audit_commands(run: Run, tmp_path: Path) -> None:
    from shipyard.security.audit_log import AuditLog
    from shipyard.security.keys import init_keys, read_secret

    keys = init_keys(tmp_path / "k")
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(log_path, read_secret(keys.audit_key)) as log:
        for _ in range(3):
            log.record("infer", who="ci-bot", model="iris")
    code, out, _ = run("audit", "head", log_path, "--key-file", keys.audit_key)
    assert code == 0 and json.loads(out)["seq"] == 3
    head = tmp_path / "head.json"
    head.write_text(out)
    assert run("audit", "verify", log_path, "--key-file", keys.audit_key, "--head", head)[0] == 0
    lines = log_path.read_text().splitlines(keepends=True)
    log_path.write_text(lines[0] + lines[2])
    code, out, _ = run("audit", "verify", log_path, "--key-file", keys.audit_key, "--json")
    report = json.loads(out)
    assert code == 1 and (report["first_bad_seq"], report["first_bad_line"]) == (3, 2)
    code, _, err = run("audit", "verify", log_path, "--key-file", keys.audit_key)
    assert code == 1 and "line 2 (seq 3)" in err


def test_tokens_refuse_past_expiry_open_files_and_record_revocations(
    run: Run, tmp_path: Path
) -> None:
    file = tmp_path / "tokens.json"
    code, _, err = run(
        "tokens",
        "--file",
        file,
        "create",
        "--name",
        "a",
        "--scope",
        "infer:*",
        "--expires",
        "2000-01-01T00:00:00+00:00",
    )
    assert code == 2 and "in the past" in err and not file.exists()
    assert run("tokens", "--file", file, "create", "--name", "a", "--scope", "infer:*")[0] == 0
    code, out, _ = run("tokens", "--file", file, "revoke", "a")
    assert code == 0 and "revoked_at" in out and "revoked_by" in out
    code, out, _ = run("tokens", "--file", file, "list", "--json")
    assert json.loads(out) == []
    code, out, _ = run("tokens", "--file", file, "list", "--json", "--revoked")
    (record,) = json.loads(out)
    assert record["name"] == "a" and record["revoked_at"] and record["revoked_by"]
    file.chmod(0o666)
    code, _, err = run("tokens", "--file", file, "list")
    assert code == 2 and "chmod 600" in err


def test_cli_exit_code_for_open_secret_files_is_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "tokens.json"
    assert main(["tokens", "--file", str(file), "create", "--name", "a", "--scope", "infer:*"]) == 0
    file.chmod(0o640)
    capsys.readouterr()
    assert main(["tokens", "--file", str(file), "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "group" in err and err.count("\n") == 1


def test_sign_refuses_a_readable_private_key(run: Run, version_dir: Path, tmp_path: Path) -> None:
    from shipyard.security.keys import init_keys

    keys = init_keys(tmp_path / "k")
    keys.signing_key.chmod(0o644)
    code, _, err = run("sign", version_dir, "--key", keys.signing_key)
    assert code == 2 and "private key is readable" in err
    assert not (version_dir / "model.sig").exists()
