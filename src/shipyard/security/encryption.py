"""Envelope encryption of model.onnx: a per-package AES-256-GCM data key, chunked, wrapped by a KEK.

File `model.onnx.enc` = MAGIC, then one record per chunk: AES-256-GCM(ciphertext ‖ 16-byte tag).
Each chunk's nonce is its index (the data key is fresh for every package, so nonces never
repeat under one key) and its associated data binds the package name, version, chunk index
and chunk count, so reordered, truncated, appended or transplanted chunks fail to
authenticate. The data key is wrapped with AES-256-GCM under the key-encryption key (KEK),
with the package name and version as associated data, and stored in the manifest with the
KEK's id; rotating the KEK rewrites only that wrapped key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shipyard.errors import IntegrityError, UsageError
from shipyard.package.hashing import sha256_file
from shipyard.package.manifest import (
    MANIFEST_NAME,
    MODEL_FILE,
    Encryption,
    FileEntry,
    Manifest,
    read_manifest,
)
from shipyard.package.store import SIGNATURE_FILE, read_verified
from shipyard.security.errors import DecryptionError, KeyFileError
from shipyard.security.fileio import copy_mode, fsync_dir
from shipyard.security.keys import SECRET_BYTES, key_id

SCHEME = "aes-256-gcm-chunked-v1+aes-256-gcm-wrap"
ENCRYPTED_FILE = MODEL_FILE + ".enc"
MAGIC = b"SHPYENC1"
TAG_BYTES = 16
NONCE_BYTES = 12
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
    """Replace model.onnx by model.onnx.enc, delete the plaintext, re-seal the manifest.

    Streams chunk by chunk (memory stays O(chunk_size)). Re-running after a crash finishes
    the job: a stale ciphertext is rewritten, a leftover plaintext is removed.
    """
    version_dir = Path(version_dir)
    _check_kek(kek)
    if not 1 <= chunk_size <= 1 << 30:
        raise UsageError(f"chunk size {chunk_size} out of range (1 byte … 1 GiB)")
    current = read_manifest(version_dir)
    if current.encryption is not None:
        if key_id(kek) != current.encryption.kek_id:
            raise UsageError(
                f"{_label(version_dir, current)}: already encrypted under key id "
                f"{current.encryption.kek_id}; rotate keys with `shipyard keys rewrap`"
            )
        leftover = version_dir / MODEL_FILE
        if leftover.is_file() and sha256_file(leftover) == current.encryption.plaintext_sha256:
            leftover.unlink()  # the plaintext an interrupted run did not get to delete
        read_verified(version_dir)
        return current
    if ENCRYPTED_FILE not in current.files:
        (version_dir / ENCRYPTED_FILE).unlink(missing_ok=True)  # stale from an interrupted run
    _check_signature_policy(version_dir, remove_signature)
    manifest = read_verified(version_dir)
    if MODEL_FILE not in manifest.files:
        raise IntegrityError(str(version_dir / MANIFEST_NAME), f"does not list {MODEL_FILE}")
    plain = version_dir / MODEL_FILE
    size = plain.stat().st_size
    count = max(1, -(-size // chunk_size))
    data_key = AESGCM.generate_key(bit_length=256)
    aead = AESGCM(data_key)
    digest, written = hashlib.sha256(), hashlib.sha256(MAGIC)
    fd, tmp_name = tempfile.mkstemp(prefix=".enc-", dir=version_dir.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, plain.open("rb") as src:
            out.write(MAGIC)
            for index in range(count):
                chunk = src.read(chunk_size)
                digest.update(chunk)
                ad = _chunk_ad(manifest.name, manifest.version, index, count)
                record = aead.encrypt(_nonce(index), chunk, ad)
                written.update(record)
                out.write(record)
            if src.read(1):
                raise IntegrityError(str(plain), "grew while being encrypted")
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != manifest.files[MODEL_FILE].sha256:
            raise IntegrityError(str(plain), "changed while being encrypted (sha256 mismatch)")
        info = Encryption(
            scheme=SCHEME,
            file=ENCRYPTED_FILE,
            wrapped_key=_wrap(kek, data_key, manifest.name, manifest.version),
            kek_id=key_id(kek),
            chunk_size=chunk_size,
            chunk_count=count,
            plaintext_sha256=digest.hexdigest(),
            plaintext_size=size,
        )
        files = {k: v for k, v in manifest.files.items() if k != MODEL_FILE}
        files[ENCRYPTED_FILE] = FileEntry(sha256=written.hexdigest(), size=tmp.stat().st_size)
        copy_mode(plain, tmp)
        # Only now, with the work done, drop the signature that the new files would break.
        (version_dir / SIGNATURE_FILE).unlink(missing_ok=True)
        os.replace(tmp, version_dir / ENCRYPTED_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    sealed = manifest.model_copy(update={"files": files, "encryption": info}).sealed()
    replace_manifest(version_dir, sealed)
    plain.unlink()
    return sealed


def decrypt_model_bytes(version_dir: str | Path, manifest: Manifest, kek: bytes) -> bytes:
    """Decrypt the model into memory (never to disk) and check its plaintext sha256."""
    version_dir = Path(version_dir)
    info = _info(version_dir, manifest)
    aead = AESGCM(unwrap_data_key(version_dir, manifest, kek))
    label = _label(version_dir, manifest)
    path = version_dir / info.file
    expected_size = len(MAGIC) + info.plaintext_size + TAG_BYTES * info.chunk_count
    actual_size = path.stat().st_size
    if actual_size != expected_size:
        problem = "truncated" if actual_size < expected_size else "has trailing data"
        raise DecryptionError(
            f"{label}: {info.file} is {actual_size} bytes, expected {expected_size} ({problem})"
        )
    parts: list[bytes] = []
    digest = hashlib.sha256()
    for index, record in _records(path, info):
        ad = _chunk_ad(manifest.name, manifest.version, index, info.chunk_count)
        try:
            chunk = aead.decrypt(_nonce(index), record, ad)
        except InvalidTag as exc:
            raise DecryptionError(
                f"{label}: chunk {index + 1} of {info.chunk_count} of {info.file} fails "
                "authentication (the encrypted model was modified, reordered, truncated or "
                "taken from another package)"
            ) from exc
        digest.update(chunk)
        parts.append(chunk)
    if digest.hexdigest() != info.plaintext_sha256:
        raise DecryptionError(f"{label}: decrypted model does not match its recorded sha256")
    return b"".join(parts)


def rewrap(
    version_dir: str | Path, old_kek: bytes, new_kek: bytes, *, remove_signature: bool = False
) -> Manifest:
    """Rotate the key-encryption key: re-wrap the data key; the model file is not touched."""
    version_dir = Path(version_dir)
    _check_kek(new_kek)
    _check_signature_policy(version_dir, remove_signature)
    manifest = read_verified(version_dir)
    info = _info(version_dir, manifest)
    data_key = unwrap_data_key(version_dir, manifest, old_kek)
    new_info = info.model_copy(
        update={
            "wrapped_key": _wrap(new_kek, data_key, manifest.name, manifest.version),
            "kek_id": key_id(new_kek),
        }
    )
    sealed = manifest.model_copy(update={"encryption": new_info}).sealed()
    (version_dir / SIGNATURE_FILE).unlink(missing_ok=True)
    replace_manifest(version_dir, sealed)
    return sealed


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


def replace_manifest(version_dir: Path, manifest: Manifest) -> None:
    """Atomically replace manifest.json (temp file, fsync, rename, fsync folder)."""
    fd, tmp_name = tempfile.mkstemp(prefix=".manifest-", dir=version_dir.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(manifest.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        copy_mode(version_dir / MANIFEST_NAME, tmp)
        os.replace(tmp, version_dir / MANIFEST_NAME)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(version_dir)


def _records(path: Path, info: Encryption) -> Iterator[tuple[int, bytes]]:
    last = info.plaintext_size - (info.chunk_count - 1) * info.chunk_size
    with path.open("rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise DecryptionError(f"{path}: not a Shipyard encrypted model (bad header)")
        for index in range(info.chunk_count):
            length = (info.chunk_size if index < info.chunk_count - 1 else last) + TAG_BYTES
            record = fh.read(length)
            if len(record) != length:
                raise DecryptionError(f"{path}: truncated at chunk {index + 1}")
            yield index, record


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


def _nonce(index: int) -> bytes:
    return index.to_bytes(NONCE_BYTES, "big")


def _label(version_dir: Path, manifest: Manifest) -> str:
    return f"{manifest.name} version {manifest.version} ({version_dir})"
