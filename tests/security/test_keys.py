"""Key creation (modes, refusal to overwrite) and reading secrets from files and env."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shipyard.cli.failures import exit_code
from shipyard.security.errors import KeyFileError
from shipyard.security.fileio import InsecurePermissionsError
from shipyard.security.keys import (
    KeyPaths,
    init_keys,
    key_id,
    load_audit_key,
    load_kek,
    read_secret,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_keys_writes_p256_pair_and_secrets_with_private_modes(keys: KeyPaths) -> None:
    assert _mode(keys.directory) == 0o700
    for path in (keys.signing_key, keys.public_key, keys.data_key, keys.audit_key):
        assert _mode(path) == 0o600, path
    private = serialization.load_pem_private_key(keys.signing_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp256r1"
    public = serialization.load_pem_public_key(keys.public_key.read_bytes())
    assert public == private.public_key()
    kek, audit = read_secret(keys.data_key), read_secret(keys.audit_key)
    assert len(kek) == len(audit) == 32 and kek != audit


def test_init_keys_refuses_to_overwrite(keys: KeyPaths) -> None:
    before = keys.signing_key.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        init_keys(keys.directory)
    assert keys.signing_key.read_bytes() == before


def test_secrets_from_raw_files_env_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "raw.key"
    raw.write_bytes(b"\x01" * 32)
    raw.chmod(0o600)
    assert read_secret(raw) == b"\x01" * 32
    short = tmp_path / "short.key"
    short.write_text(base64.b64encode(b"x" * 16).decode())
    short.chmod(0o600)
    with pytest.raises(KeyFileError, match="holds 16 bytes, expected 32"):
        read_secret(short)
    with pytest.raises(KeyFileError, match="not found"):
        read_secret(tmp_path / "missing.key")
    with pytest.raises(KeyFileError, match="SHIPYARD_KEK"):
        load_kek()
    monkeypatch.setenv("SHIPYARD_KEK", base64.b64encode(b"\x02" * 32).decode())
    assert load_kek() == b"\x02" * 32
    monkeypatch.setenv("SHIPYARD_AUDIT_KEY", "not base64!")
    with pytest.raises(KeyFileError, match=r"\$SHIPYARD_AUDIT_KEY: not base64"):
        load_audit_key()


def test_key_id_is_stable_and_does_not_reveal_the_key() -> None:
    key = b"\x03" * 32
    assert key_id(key) == key_id(key) and len(key_id(key)) == 16
    assert key.hex()[:16] != key_id(key) and key_id(key) != key_id(b"\x04" * 32)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o666, 0o602])
def test_key_files_open_to_group_or_others_are_refused(keys: KeyPaths, mode: int) -> None:
    """A world-readable key-encryption key was read without a word."""
    keys.data_key.chmod(mode)
    with pytest.raises(InsecurePermissionsError, match=r"chmod 600") as caught:
        read_secret(keys.data_key)
    assert exit_code(caught.value) == 2 and f"mode {mode:04o}" in str(caught.value)
    with pytest.raises(InsecurePermissionsError):
        load_kek(keys.data_key)
    keys.data_key.chmod(0o400)
    assert len(read_secret(keys.data_key)) == 32
