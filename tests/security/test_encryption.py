"""Envelope encryption: loads with the key only, tampering with chunks fails, KEK rotation works."""

from __future__ import annotations

import base64
import shutil
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest

import shipyard
from shipyard.errors import IntegrityError, UsageError
from shipyard.model import load_model
from shipyard.package.manifest import Manifest, read_manifest
from shipyard.package.store import read_verified
from shipyard.security.encryption import (
    ENCRYPTED_FILE,
    MAGIC,
    TAG_BYTES,
    decrypt_model_bytes,
    encrypt_version,
    rewrap,
)
from shipyard.security.errors import DecryptionError, KeyRequiredError
from shipyard.security.keys import KeyPaths, key_id, new_secret, read_secret
from shipyard.security.signing import sign_version, verify_version
from tests.conftest import affine_reference

CHUNK = 64  # the tiny model spans several chunks


@pytest.fixture
def kek() -> bytes:
    return new_secret()


@pytest.fixture
def encrypted(version_dir: Path, kek: bytes) -> Path:
    encrypt_version(version_dir, kek, chunk_size=CHUNK)
    return version_dir


def _records(path: Path, manifest: Manifest) -> list[bytes]:
    info = manifest.encryption
    assert info is not None
    data = path.read_bytes()[len(MAGIC) :]
    step = info.chunk_size + TAG_BYTES
    return [data[i : i + step] for i in range(0, len(data), step)]


def _write_records(path: Path, records: list[bytes]) -> None:
    path.write_bytes(MAGIC + b"".join(records))


def test_encrypt_replaces_plaintext_and_records_the_envelope(
    version_dir: Path, kek: bytes, tmp_path: Path
) -> None:
    plaintext = (version_dir / "model.onnx").read_bytes()
    (version_dir / "model.onnx").chmod(0o640)
    (version_dir / "manifest.json").chmod(0o644)
    manifest = encrypt_version(version_dir, kek, chunk_size=CHUNK)
    assert stat.S_IMODE((version_dir / ENCRYPTED_FILE).stat().st_mode) == 0o640
    assert stat.S_IMODE((version_dir / "manifest.json").stat().st_mode) == 0o644
    assert not (version_dir / "model.onnx").exists()
    assert sorted(p.name for p in version_dir.iterdir()) == ["manifest.json", ENCRYPTED_FILE]
    assert list(manifest.files) == [ENCRYPTED_FILE]
    info = manifest.encryption
    assert info is not None
    assert info.kek_id == key_id(kek) and info.plaintext_size == len(plaintext)
    assert info.chunk_count == -(-len(plaintext) // CHUNK) > 2
    assert read_verified(version_dir) == manifest
    # No file anywhere under the test folder still holds the model's plaintext.
    needle = plaintext[len(plaintext) // 2 : len(plaintext) // 2 + 32]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes(), path
    assert decrypt_model_bytes(version_dir, manifest, kek) == plaintext


def test_encrypted_package_infers_like_the_plain_one(
    affine_model: onnx.ModelProto, repo: Path, kek: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = shipyard.pack(affine_model, name="plain", repo=repo).path
    secret = shipyard.pack(affine_model, name="secret", repo=repo).path
    encrypt_version(secret, kek)
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    expected = load_model(plain).infer(x)["y"]
    np.testing.assert_array_equal(load_model(secret, kek=kek).infer(x)["y"], expected)
    np.testing.assert_allclose(expected, affine_reference(affine_model, x), rtol=1e-5)
    monkeypatch.setenv("SHIPYARD_KEK", base64.b64encode(kek).decode())
    np.testing.assert_array_equal(shipyard.load(secret).infer(x)["y"], expected)


def test_refused_without_key_and_with_wrong_key(encrypted: Path) -> None:
    with pytest.raises(
        KeyRequiredError, match="model is encrypted; pass --key-file or set SHIPYARD_KEK"
    ):
        load_model(encrypted)
    with pytest.raises(DecryptionError, match=r"affine version 1 .*wrong key-encryption key"):
        load_model(encrypted, kek=new_secret())


def test_reordered_chunks_fail(encrypted: Path, kek: bytes) -> None:
    manifest = read_manifest(encrypted)
    path = encrypted / ENCRYPTED_FILE
    records = _records(path, manifest)
    records[0], records[1] = records[1], records[0]
    _write_records(path, records)
    with pytest.raises(DecryptionError, match=r"chunk 1 of \d+ .*fails authentication"):
        decrypt_model_bytes(encrypted, manifest, kek)
    # Through the loader the file hash catches it first; a re-sealed manifest gets past that
    # check, and then authenticated encryption still refuses.
    with pytest.raises(IntegrityError, match=ENCRYPTED_FILE):
        load_model(encrypted, kek=kek)
    _reseal_files(encrypted, manifest)
    with pytest.raises(DecryptionError, match="fails authentication"):
        load_model(encrypted, kek=kek)


def test_truncation_fails_even_with_a_consistent_manifest(encrypted: Path, kek: bytes) -> None:
    manifest = read_manifest(encrypted)
    info = manifest.encryption
    assert info is not None
    path = encrypted / ENCRYPTED_FILE
    records = _records(path, manifest)
    _write_records(path, records[:-1])
    with pytest.raises(DecryptionError, match="truncated"):
        decrypt_model_bytes(encrypted, manifest, kek)
    # The attacker also shrinks chunk_count and plaintext_size to match: the associated data
    # binds the chunk count, so the (now) last chunk no longer authenticates.
    forged_info = info.model_copy(
        update={
            "chunk_count": info.chunk_count - 1,
            "plaintext_size": (info.chunk_count - 1) * info.chunk_size,
        }
    )
    forged = manifest.model_copy(update={"encryption": forged_info})
    with pytest.raises(DecryptionError, match="fails authentication"):
        decrypt_model_bytes(encrypted, forged, kek)


def test_chunks_swapped_in_from_another_package_fail(
    affine_model: onnx.ModelProto, repo: Path, kek: bytes
) -> None:
    a = shipyard.pack(affine_model, name="a", repo=repo).path
    b = shipyard.pack(affine_model, name="b", repo=repo).path
    manifest_a = encrypt_version(a, kek, chunk_size=CHUNK)
    manifest_b = encrypt_version(b, kek, chunk_size=CHUNK)
    records_a = _records(a / ENCRYPTED_FILE, manifest_a)
    records_a[1] = _records(b / ENCRYPTED_FILE, manifest_b)[1]
    _write_records(a / ENCRYPTED_FILE, records_a)
    with pytest.raises(DecryptionError, match="chunk 2 of"):
        decrypt_model_bytes(a, manifest_a, kek)
    # Transplanting b's whole ciphertext and wrapped key into a fails at unwrapping: the
    # wrapped key is bound to b's name and version.
    shutil.copyfile(b / ENCRYPTED_FILE, a / ENCRYPTED_FILE)
    transplanted = manifest_a.model_copy(update={"encryption": manifest_b.encryption})
    with pytest.raises(DecryptionError, match="cannot unwrap the data key"):
        decrypt_model_bytes(a, transplanted, kek)


def test_rewrap_rotates_the_kek_without_touching_the_model(
    encrypted: Path, kek: bytes, keys: KeyPaths
) -> None:
    ciphertext = (encrypted / ENCRYPTED_FILE).read_bytes()
    new = new_secret()
    manifest = rewrap(encrypted, kek, new)
    assert manifest.encryption is not None and manifest.encryption.kek_id == key_id(new)
    assert (encrypted / ENCRYPTED_FILE).read_bytes() == ciphertext
    assert load_model(encrypted, kek=new).infer(np.ones((1, 4), np.float32))["y"].shape == (1, 3)
    with pytest.raises(DecryptionError, match="wrong key-encryption key"):
        load_model(encrypted, kek=kek)
    sign_version(encrypted, keys.signing_key)
    with pytest.raises(DecryptionError, match="wrong key-encryption key"):
        rewrap(encrypted, kek, new_secret(), remove_signature=True)
    assert verify_version(encrypted, keys.public_key)  # a failed rotation keeps the signature


def test_signed_packages_need_explicit_consent_and_can_be_signed_after(
    version_dir: Path, kek: bytes, keys: KeyPaths
) -> None:
    sign_version(version_dir, keys.signing_key)
    with pytest.raises(UsageError, match="--remove-signature"):
        encrypt_version(version_dir, kek)
    assert (version_dir / "model.onnx").exists() and (version_dir / "model.sig").exists()
    encrypt_version(version_dir, kek, remove_signature=True)
    assert not (version_dir / "model.sig").exists()
    sign_version(version_dir, keys.signing_key)
    assert verify_version(version_dir, keys.public_key).files == ("manifest.json", ENCRYPTED_FILE)
    model = load_model(version_dir, public_key=keys.public_key, kek=kek)
    assert model.version == 1


def test_interrupted_encrypt_leaves_the_version_plain_and_a_rerun_finishes(
    version_dir: Path, kek: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shipyard.package.swap as swap

    before = read_manifest(version_dir)

    def crash(*_args: object) -> None:
        raise OSError("killed")

    monkeypatch.setattr(swap, "exchange", crash)
    with pytest.raises(OSError, match="killed"):
        encrypt_version(version_dir, kek, chunk_size=CHUNK)
    assert read_verified(version_dir) == before  # untouched: still plain, nothing half-done
    assert [p.name for p in version_dir.parent.iterdir()] == [version_dir.name]
    monkeypatch.undo()
    manifest = encrypt_version(version_dir, kek, chunk_size=CHUNK)
    assert manifest.encryption is not None and not (version_dir / "model.onnx").exists()
    assert encrypt_version(version_dir, kek) == manifest  # again under the same key: nothing to do
    (version_dir / "model.onnx").write_bytes(b"someone else's file")  # never deleted
    with pytest.raises(IntegrityError, match="not listed in the manifest"):
        encrypt_version(version_dir, kek)
    assert (version_dir / "model.onnx").exists()
    with pytest.raises(UsageError, match="already encrypted under key id"):
        encrypt_version(version_dir, new_secret())


def test_key_file_from_init_keys_works(version_dir: Path, keys: KeyPaths) -> None:
    kek = read_secret(keys.data_key)
    encrypt_version(version_dir, kek)
    assert load_model(version_dir, kek=kek).name == "affine"


def _reseal_files(version_dir: Path, manifest: Manifest) -> None:
    from shipyard.package.hashing import sha256_file
    from shipyard.package.manifest import FileEntry

    path = version_dir / ENCRYPTED_FILE
    files = {ENCRYPTED_FILE: FileEntry(sha256=sha256_file(path), size=path.stat().st_size)}
    forged = manifest.model_copy(update={"files": files}).sealed()
    (version_dir / "manifest.json").write_text(forged.to_json(), encoding="utf-8")
