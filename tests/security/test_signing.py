"""Signing with OpenSSF model-signing: our signatures verify with its CLI, tampering is named."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import shipyard
from shipyard.errors import IntegrityError
from shipyard.model import load_model
from shipyard.package.manifest import read_manifest
from shipyard.package.store import read_verified
from shipyard.security.errors import SignatureError
from shipyard.security.fileio import InsecurePermissionsError
from shipyard.security.keys import KeyPaths, init_keys
from shipyard.security.signing import sign_version, verify_version


def _flip_byte(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _cli_verify(version_dir: Path, public_key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "model_signing",
            "verify",
            "key",
            str(version_dir),
            "--signature",
            str(version_dir / "model.sig"),
            "--public_key",
            str(public_key),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_signature_verifies_here_and_with_model_signing_cli(
    version_dir: Path, keys: KeyPaths
) -> None:
    (version_dir / "manifest.json").chmod(0o644)
    sig = sign_version(version_dir, keys.signing_key)
    assert sig == version_dir / "model.sig"
    assert stat.S_IMODE(sig.stat().st_mode) == 0o644  # as readable as the package it signs
    result = verify_version(version_dir, keys.public_key)
    assert result.files == ("manifest.json", "model.onnx", "samples/warmup.npz")
    read_verified(version_dir)  # model.sig is an allowed unlisted file
    cli = _cli_verify(version_dir, keys.public_key)
    assert cli.returncode == 0, cli.stderr
    assert "Verification succeeded" in cli.stdout
    _flip_byte(version_dir / "model.onnx")
    assert _cli_verify(version_dir, keys.public_key).returncode == 1


def test_signature_made_by_model_signing_cli_verifies_here(
    version_dir: Path, keys: KeyPaths
) -> None:
    sig = version_dir / "model.sig"
    cli = subprocess.run(
        [sys.executable, "-m", "model_signing", "sign", "key", str(version_dir),
         "--signature", str(sig), "--private_key", str(keys.signing_key)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    files = verify_version(version_dir, keys.public_key).files
    assert files == ("manifest.json", "model.onnx", "samples/warmup.npz")


def test_load_requires_valid_signature_and_names_the_changed_file(
    version_dir: Path, keys: KeyPaths
) -> None:
    sign_version(version_dir, keys.signing_key)
    model = load_model(version_dir, public_key=keys.public_key)
    x = np.ones((2, 4), dtype=np.float32)
    assert model.infer(x)["y"].shape == (2, 3)
    _flip_byte(version_dir / "model.onnx")
    with pytest.raises(
        SignatureError, match=r"model\.onnx.*changed since signing: model\.onnx"
    ) as info:
        load_model(version_dir, public_key=keys.public_key)
    assert info.value.files == ("model.onnx",)
    assert info.value.status == 422


def test_resealed_manifest_does_not_fool_the_signature(version_dir: Path, keys: KeyPaths) -> None:
    sign_version(version_dir, keys.signing_key)
    manifest = read_manifest(version_dir)
    tampered = manifest.model_copy(update={"metadata": {"owner": "mallory"}}).sealed()
    (version_dir / "manifest.json").write_text(tampered.to_json())
    read_verified(version_dir)  # the unkeyed digest alone cannot tell
    with pytest.raises(SignatureError, match=r"changed since signing: manifest\.json"):
        verify_version(version_dir, keys.public_key)


def test_added_file_is_named(version_dir: Path, keys: KeyPaths) -> None:
    sign_version(version_dir, keys.signing_key)
    (version_dir / "extra.bin").write_bytes(b"x")
    with pytest.raises(SignatureError, match=r"not covered by the signature: extra\.bin"):
        verify_version(version_dir, keys.public_key)


def test_unsigned_refused_when_required_but_loads_otherwise(
    version_dir: Path, keys: KeyPaths
) -> None:
    with pytest.raises(SignatureError, match=r"not signed \(no model\.sig\); sign it with"):
        load_model(version_dir, public_key=keys.public_key)
    assert shipyard.load(version_dir).version == 1


def test_other_key_and_corrupt_signature_are_refused(
    version_dir: Path, keys: KeyPaths, tmp_path: Path
) -> None:
    sign_version(version_dir, keys.signing_key)
    other = init_keys(tmp_path / "other")
    with pytest.raises(SignatureError, match="signed with a different key"):
        verify_version(version_dir, other.public_key)
    (version_dir / "model.sig").write_text("{not json")
    with pytest.raises(SignatureError, match=r"model\.sig"):
        verify_version(version_dir, keys.public_key)


def test_tampered_package_is_not_signed(version_dir: Path, keys: KeyPaths) -> None:
    _flip_byte(version_dir / "model.onnx")
    with pytest.raises(IntegrityError, match=r"model\.onnx"):
        sign_version(version_dir, keys.signing_key)
    assert not (version_dir / "model.sig").exists()


def test_public_key_others_can_replace_is_refused(version_dir: Path, keys: KeyPaths) -> None:
    """Whoever can swap the public key can make their own signatures pass."""
    sign_version(version_dir, keys.signing_key)
    keys.public_key.chmod(0o666)
    with pytest.raises(InsecurePermissionsError, match="writable by group or others"):
        verify_version(version_dir, keys.public_key)
    keys.public_key.chmod(0o644)  # world-readable is fine: it is public
    assert verify_version(version_dir, keys.public_key).files
