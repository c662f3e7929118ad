"""Envelope encryption of a package: a per-package AES-256-GCM data key, chunked, wrapped by a KEK.

`model.onnx` becomes `model.onnx.enc` (format: `shipyard.security.chunked`); external data
files and processing assets (the tokenizer.json, `assets/*`) become `NAME.enc`, each under
its own key derived from the data key and its path. Chunk nonces are chunk indexes (the
data key is fresh for every package, so nonces never repeat under one key) and each chunk's
associated data binds the package name, version, chunk index and count (and the file), so
reordered, truncated, appended or transplanted chunks fail to authenticate. The data key is
wrapped with AES-256-GCM under the key-encryption key (KEK), with the package name and
version as associated data, and stored in the manifest with the KEK's id; rotating the KEK
rewrites only that wrapped key. The manifest lists the encrypted files' hashes (a signature
covers them) and records each plaintext's sha256, checked after decryption in memory.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from functools import partial
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shipyard.errors import IntegrityError, UsageError
from shipyard.package.manifest import (
    MANIFEST_NAME,
    MODEL_FILE,
    EncryptedFile,
    Encryption,
    Manifest,
    read_manifest,
)
from shipyard.package.store import SIGNATURE_FILE, read_verified, rewrite_version
from shipyard.processing.spec import ASSETS_DIR
from shipyard.security.chunked import (
    MAGIC,
    NONCE_BYTES,
    TAG_BYTES,
    decrypt_file,
    encrypt_file,
)
from shipyard.security.errors import DecryptionError, KeyFileError
from shipyard.security.keys import SECRET_BYTES, key_id

__all__ = ["MAGIC", "TAG_BYTES", "decrypt_model_bytes", "encrypt_version", "rewrap"]

SCHEME = "aes-256-gcm-chunked-v1+aes-256-gcm-wrap"
ENCRYPTED_FILE = MODEL_FILE + ".enc"
DEFAULT_CHUNK = 4 << 20
_CHUNK_AD = b"shipyard/model-chunk/v1\0"
_WRAP_AD = b"shipyard/data-key-wrap/v1\0"


def encrypt_version(
    version_dir: str | Path,
    kek: bytes,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    remove_signature: bool = False,
) -> Manifest:
    """Replace model.onnx by model.onnx.enc, without the plaintext; returns the new manifest.

    External data files (models past 2 GB) and processing assets are encrypted the same
    way; the warm-up sample is removed. The version is rewritten as a whole
    (`store.rewrite_version`): a server watching the repository sees it plain or encrypted,
    never half-encrypted, and a crash leaves it plain. Streams chunk by chunk (memory stays
    O(chunk_size)). Encrypting again under the same key only encrypts assets a version
    encrypted before assets were leaves in plaintext.
    """
    version_dir = Path(version_dir)
    _check_kek(kek)
    if not 1 <= chunk_size <= 1 << 30:
        raise UsageError(f"chunk size {chunk_size} out of range (1 byte … 1 GiB)")
    current = read_manifest(version_dir)
    if current.encryption is not None:
        _check_same_kek(version_dir, current, kek)
        read_verified(version_dir)
        if not plain_assets(current):
            return current
    _check_signature_policy(version_dir, remove_signature)

    def encrypt(staging: Path, manifest: Manifest) -> Manifest:
        if manifest.encryption is not None:  # encrypted before (or by another run)
            _check_same_kek(version_dir, manifest, kek)
            return _encrypt_assets(staging, manifest, kek)
        return _encrypt_staged(staging, manifest, kek, chunk_size=chunk_size)

    return rewrite_version(version_dir, encrypt, remove_signature=remove_signature)


def _encrypt_assets(staging: Path, manifest: Manifest, kek: bytes) -> Manifest:
    """An encrypted version's plaintext assets encrypted under its data key."""
    assert manifest.encryption is not None
    rels = plain_assets(manifest)
    if not rels:
        return manifest
    info = manifest.encryption
    data_key = unwrap_data_key(staging, manifest, kek)
    added = _encrypt_files(staging, manifest, data_key, rels, chunk_size=info.chunk_size)
    for rel in rels:
        (staging / rel).unlink()
    assets = info.model_copy(update={"assets": [*info.assets, *added]})
    return manifest.model_copy(update={"encryption": assets})


def _encrypt_staged(staging: Path, manifest: Manifest, kek: bytes, *, chunk_size: int) -> Manifest:
    """Encrypt a staged copy in place of its plaintext files; the manifest to record."""
    if MODEL_FILE not in manifest.files:
        raise IntegrityError(str(staging / MANIFEST_NAME), f"does not list {MODEL_FILE}")
    data_key = AESGCM.generate_key(bit_length=256)
    model = encrypt_file(
        staging / MODEL_FILE,
        staging / ENCRYPTED_FILE,
        AESGCM(data_key),
        partial(_chunk_ad, manifest.name, manifest.version),
        chunk_size=chunk_size,
        expected_sha256=manifest.files[MODEL_FILE].sha256,
    )
    encrypt = partial(_encrypt_files, staging, manifest, data_key, chunk_size=chunk_size)
    info = Encryption(
        scheme=SCHEME,
        file=ENCRYPTED_FILE,
        wrapped_key=_wrap(kek, data_key, manifest.name, manifest.version),
        kek_id=key_id(kek),
        chunk_size=chunk_size,
        chunk_count=model.chunk_count,
        plaintext_sha256=model.plaintext_sha256,
        plaintext_size=model.plaintext_size,
        data_files=encrypt(manifest.external_data),
        assets=encrypt(plain_assets(manifest)),
    )
    # The warm-up sample may be real data: it does not stay beside an encrypted model in
    # plaintext (the server warms an encrypted version up on synthesized inputs).
    dropped = [MODEL_FILE, *manifest.external_data, *plain_assets(manifest)]
    if manifest.warmup:
        dropped.append(manifest.warmup.file)
    for rel in dropped:
        (staging / rel).unlink()
    return manifest.model_copy(update={"encryption": info, "warmup": None})


def plain_assets(manifest: Manifest) -> list[str]:
    """Processing assets still in plaintext: files under `assets/` and those processing reads."""
    declared = manifest.processing.files() if manifest.processing is not None else []
    skip = {MODEL_FILE, *manifest.external_data}
    if manifest.encryption is not None:
        info = manifest.encryption
        skip |= {info.file, *(e.file for e in (*info.data_files, *info.assets))}
    return sorted(
        rel
        for rel in manifest.files
        if (rel.startswith(ASSETS_DIR) or rel in declared) and rel not in skip
    )


def _encrypt_files(
    staging: Path, manifest: Manifest, data_key: bytes, rels: list[str], *, chunk_size: int
) -> list[EncryptedFile]:
    """Each of `rels` to `REL.enc`, under its own key derived from the data key and its path."""
    entries = []
    for rel in rels:
        target = f"{rel}.enc"
        done = encrypt_file(
            staging / rel,
            staging / target,
            AESGCM(_file_key(data_key, rel)),
            partial(_data_ad, manifest.name, manifest.version, rel),
            chunk_size=chunk_size,
            expected_sha256=manifest.files[rel].sha256,
        )
        entries.append(
            EncryptedFile(
                plain=rel,
                file=target,
                chunk_count=done.chunk_count,
                plaintext_sha256=done.plaintext_sha256,
                plaintext_size=done.plaintext_size,
            )
        )
    return entries


def decrypt_model_bytes(version_dir: str | Path, manifest: Manifest, kek: bytes) -> bytes:
    """Decrypt the model into memory (never to disk) and check its plaintext sha256."""
    version_dir = Path(version_dir)
    info = _info(version_dir, manifest)
    return decrypt_file(
        version_dir / info.file,
        AESGCM(unwrap_data_key(version_dir, manifest, kek)),
        partial(_chunk_ad, manifest.name, manifest.version),
        count=info.chunk_count,
        chunk_size=info.chunk_size,
        size=info.plaintext_size,
        sha256=info.plaintext_sha256,
        label=f"{_label(version_dir, manifest)}: {info.file}",
    )


def decrypt_external_data(
    version_dir: str | Path, manifest: Manifest, kek: bytes
) -> dict[str, bytes]:
    """Decrypt every external data file into memory, keyed by the location the graph names."""
    version_dir = Path(version_dir)
    return _decrypt_files(version_dir, manifest, kek, _info(version_dir, manifest).data_files)


def decrypt_assets(version_dir: str | Path, manifest: Manifest, kek: bytes) -> dict[str, bytes]:
    """Decrypt every processing asset into memory (never to disk), keyed by its plain path."""
    version_dir = Path(version_dir)
    return _decrypt_files(version_dir, manifest, kek, _info(version_dir, manifest).assets)


def _decrypt_files(
    version_dir: Path, manifest: Manifest, kek: bytes, entries: list[EncryptedFile]
) -> dict[str, bytes]:
    if not entries:
        return {}
    info = _info(version_dir, manifest)
    data_key = unwrap_data_key(version_dir, manifest, kek)
    label = _label(version_dir, manifest)
    return {
        entry.plain: decrypt_file(
            version_dir / entry.file,
            AESGCM(_file_key(data_key, entry.plain)),
            partial(_data_ad, manifest.name, manifest.version, entry.plain),
            count=entry.chunk_count,
            chunk_size=info.chunk_size,
            size=entry.plaintext_size,
            sha256=entry.plaintext_sha256,
            label=f"{label}: {entry.file}",
        )
        for entry in entries
    }


def rewrap(
    version_dir: str | Path, old_kek: bytes, new_kek: bytes, *, remove_signature: bool = False
) -> Manifest:
    """Rotate the key-encryption key: re-wrap the data key; the model file is not touched.

    Only the manifest changes, swapped in whole (`store.rewrite_version`)."""
    version_dir = Path(version_dir)
    _check_kek(new_kek)
    _check_signature_policy(version_dir, remove_signature)

    def rewrapped(staging: Path, manifest: Manifest) -> Manifest:
        info = _info(version_dir, manifest)
        data_key = unwrap_data_key(version_dir, manifest, old_kek)
        new_info = info.model_copy(
            update={
                "wrapped_key": _wrap(new_kek, data_key, manifest.name, manifest.version),
                "kek_id": key_id(new_kek),
            }
        )
        return manifest.model_copy(update={"encryption": new_info})

    return rewrite_version(version_dir, rewrapped, remove_signature=remove_signature)


def unwrap_data_key(version_dir: Path, manifest: Manifest, kek: bytes) -> bytes:
    """The package's data key; DecryptionError names the package when `kek` is not its KEK."""
    info = _info(version_dir, manifest)
    _check_kek(kek)
    label = _label(version_dir, manifest)
    if key_id(kek) != info.kek_id:
        raise DecryptionError(
            f"{label}: wrong key-encryption key (the package needs key id {info.kek_id}, "
            f"the given key has id {key_id(kek)})"
        )
    try:
        blob = base64.b64decode(info.wrapped_key, validate=True)
        nonce, wrapped = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
        return AESGCM(kek).decrypt(nonce, wrapped, _wrap_ad(manifest.name, manifest.version))
    except (InvalidTag, binascii.Error, ValueError) as exc:
        raise DecryptionError(
            f"{label}: cannot unwrap the data key (its wrapped key, name or version was "
            "altered, or the key-encryption key is wrong)"
        ) from exc


def _info(version_dir: Path, manifest: Manifest) -> Encryption:
    info = manifest.encryption
    if info is None:
        raise UsageError(f"{_label(version_dir, manifest)}: is not encrypted")
    if info.scheme != SCHEME:
        raise DecryptionError(
            f"{_label(version_dir, manifest)}: unknown encryption scheme {info.scheme!r}; "
            "upgrade Shipyard"
        )
    last = info.plaintext_size - (info.chunk_count - 1) * info.chunk_size
    if not 0 <= last <= info.chunk_size or (last == 0 and info.chunk_count > 1):
        raise DecryptionError(
            f"{_label(version_dir, manifest)}: inconsistent encryption block (size "
            f"{info.plaintext_size} does not fit {info.chunk_count} chunks of {info.chunk_size})"
        )
    return info


def _check_signature_policy(version_dir: Path, remove_signature: bool) -> None:
    sig = version_dir / SIGNATURE_FILE
    if sig.exists() and not remove_signature:
        raise UsageError(
            f"{version_dir} is signed and this changes its files, which would break {sig.name}; "
            "pass --remove-signature (remove_signature=True) and sign again afterwards"
        )


def _check_same_kek(version_dir: Path, manifest: Manifest, kek: bytes) -> None:
    assert manifest.encryption is not None
    if key_id(kek) != manifest.encryption.kek_id:
        raise UsageError(
            f"{_label(version_dir, manifest)}: already encrypted under key id "
            f"{manifest.encryption.kek_id}; rotate keys with `shipyard keys rewrap`"
        )


def _check_kek(kek: bytes) -> None:
    if not isinstance(kek, bytes) or len(kek) != SECRET_BYTES:
        raise KeyFileError(f"a key-encryption key must be {SECRET_BYTES} bytes")


def _wrap(kek: bytes, data_key: bytes, name: str, version: int) -> str:
    nonce = os.urandom(NONCE_BYTES)
    wrapped = AESGCM(kek).encrypt(nonce, data_key, _wrap_ad(name, version))
    return base64.b64encode(nonce + wrapped).decode("ascii")


def _wrap_ad(name: str, version: int) -> bytes:
    return _WRAP_AD + name.encode() + b"\0" + struct.pack(">Q", version)


def _chunk_ad(name: str, version: int, index: int, count: int) -> bytes:
    return _CHUNK_AD + name.encode() + b"\0" + struct.pack(">QQQ", version, index, count)


def _data_ad(name: str, version: int, rel: str, index: int, count: int) -> bytes:
    return _chunk_ad(name, version, index, count) + b"\0" + rel.encode()


def _file_key(data_key: bytes, rel: str) -> bytes:
    """A key per external data file: chunk nonces restart at 0 in every file, so files must
    never share a key (AES-GCM must not reuse a nonce under one key)."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"shipyard-data-file\0" + rel.encode()
    ).derive(data_key)


def _label(version_dir: Path, manifest: Manifest) -> str:
    return f"{manifest.name} version {manifest.version} ({version_dir})"
