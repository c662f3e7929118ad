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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
from shipyard.security.errors import DecryptionError, KeyFileError
from shipyard.security.fileio import copy_mode
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
    """Replace model.onnx by model.onnx.enc, without the plaintext; returns the new manifest.

    External data files (models past 2 GB) are encrypted the same way, each to `NAME.enc`
    under its own key derived from the data key; the warm-up sample is removed. The version
    is rewritten as a whole (`store.rewrite_version`): a server watching the repository sees
    it plain or encrypted, never half-encrypted, and a crash leaves it plain. Streams chunk
    by chunk (memory stays O(chunk_size)). Encrypting again under the same key does nothing.
    """
    version_dir = Path(version_dir)
    _check_kek(kek)
    if not 1 <= chunk_size <= 1 << 30:
        raise UsageError(f"chunk size {chunk_size} out of range (1 byte … 1 GiB)")
    current = read_manifest(version_dir)
    if current.encryption is not None:
        _check_same_kek(version_dir, current, kek)
        read_verified(version_dir)
        return current
    _check_signature_policy(version_dir, remove_signature)

    def encrypt(staging: Path, manifest: Manifest) -> Manifest:
        if manifest.encryption is not None:  # another run got there first
            _check_same_kek(version_dir, manifest, kek)
            return manifest
        return _encrypt_staged(staging, manifest, kek, chunk_size=chunk_size)

    return rewrite_version(version_dir, encrypt, remove_signature=remove_signature)


def _encrypt_staged(staging: Path, manifest: Manifest, kek: bytes, *, chunk_size: int) -> Manifest:
    """Encrypt a staged copy in place of its plaintext files; the manifest to record."""
    if MODEL_FILE not in manifest.files:
        raise IntegrityError(str(staging / MANIFEST_NAME), f"does not list {MODEL_FILE}")
    data_key = AESGCM.generate_key(bit_length=256)
    model = _encrypt_file(
        staging / MODEL_FILE,
        staging / ENCRYPTED_FILE,
        AESGCM(data_key),
        partial(_chunk_ad, manifest.name, manifest.version),
        chunk_size=chunk_size,
        expected_sha256=manifest.files[MODEL_FILE].sha256,
    )
    data_files: list[EncryptedFile] = []
    for rel in manifest.external_data:
        target = f"{rel}.enc"
        done = _encrypt_file(
            staging / rel,
            staging / target,
            AESGCM(_file_key(data_key, rel)),
            partial(_data_ad, manifest.name, manifest.version, rel),
            chunk_size=chunk_size,
            expected_sha256=manifest.files[rel].sha256,
        )
        data_files.append(
            EncryptedFile(
                plain=rel,
                file=target,
                chunk_count=done.chunk_count,
                plaintext_sha256=done.plaintext_sha256,
                plaintext_size=done.plaintext_size,
            )
        )
    info = Encryption(
        scheme=SCHEME,
        file=ENCRYPTED_FILE,
        wrapped_key=_wrap(kek, data_key, manifest.name, manifest.version),
        kek_id=key_id(kek),
        chunk_size=chunk_size,
        chunk_count=model.chunk_count,
        plaintext_sha256=model.plaintext_sha256,
        plaintext_size=model.plaintext_size,
        data_files=data_files,
    )
    # The warm-up sample may be real data: it does not stay beside an encrypted model in
    # plaintext (the server warms an encrypted version up on synthesized inputs).
    dropped = [MODEL_FILE, *manifest.external_data]
    if manifest.warmup:
        dropped.append(manifest.warmup.file)
    for rel in dropped:
        (staging / rel).unlink()
    return manifest.model_copy(update={"encryption": info, "warmup": None})


@dataclass(frozen=True)
class _Encrypted:
    chunk_count: int
    plaintext_sha256: str
    plaintext_size: int


def _encrypt_file(
    plain: Path,
    target: Path,
    aead: AESGCM,
    ad_for: Callable[[int, int], bytes],
    *,
    chunk_size: int,
    expected_sha256: str,
) -> _Encrypted:
    """Stream `plain` chunk by chunk into `target` (temp file + rename); O(chunk) memory."""
    size = plain.stat().st_size
    count = max(1, -(-size // chunk_size))
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=".enc-", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, plain.open("rb") as src:
            out.write(MAGIC)
            for index in range(count):
                chunk = src.read(chunk_size)
                digest.update(chunk)
                out.write(aead.encrypt(_nonce(index), chunk, ad_for(index, count)))
            if src.read(1):
                raise IntegrityError(str(plain), "grew while being encrypted")
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected_sha256:
            raise IntegrityError(str(plain), "changed while being encrypted (sha256 mismatch)")
        copy_mode(plain, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return _Encrypted(count, digest.hexdigest(), size)


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
    return _decrypt_file(
        path,
        aead,
        partial(_chunk_ad, manifest.name, manifest.version),
        count=info.chunk_count,
        chunk_size=info.chunk_size,
        size=info.plaintext_size,
        sha256=info.plaintext_sha256,
        label=f"{label}: {info.file}",
    )


def decrypt_external_data(
    version_dir: str | Path, manifest: Manifest, kek: bytes
) -> dict[str, bytes]:
    """Decrypt every external data file into memory, keyed by the location the graph names."""
    version_dir = Path(version_dir)
    info = _info(version_dir, manifest)
    data_key = unwrap_data_key(version_dir, manifest, kek)
    label = _label(version_dir, manifest)
    out: dict[str, bytes] = {}
    for entry in info.data_files:
        expected = len(MAGIC) + entry.plaintext_size + TAG_BYTES * entry.chunk_count
        path = version_dir / entry.file
        if path.stat().st_size != expected:
            raise DecryptionError(f"{label}: {entry.file} is not {expected} bytes (truncated?)")
        out[entry.plain] = _decrypt_file(
            path,
            AESGCM(_file_key(data_key, entry.plain)),
            partial(_data_ad, manifest.name, manifest.version, entry.plain),
            count=entry.chunk_count,
            chunk_size=info.chunk_size,
            size=entry.plaintext_size,
            sha256=entry.plaintext_sha256,
            label=f"{label}: {entry.file}",
        )
    return out


def _decrypt_file(
    path: Path,
    aead: AESGCM,
    ad_for: Callable[[int, int], bytes],
    *,
    count: int,
    chunk_size: int,
    size: int,
    sha256: str,
    label: str,
) -> bytes:
    parts: list[bytes] = []
    digest = hashlib.sha256()
    for index, record in _records(path, chunk_size=chunk_size, count=count, size=size):
        try:
            chunk = aead.decrypt(_nonce(index), record, ad_for(index, count))
        except InvalidTag as exc:
            raise DecryptionError(
                f"{label}: chunk {index + 1} of {count} fails authentication (the encrypted "
                "file was modified, reordered, truncated or taken from another package)"
            ) from exc
        digest.update(chunk)
        parts.append(chunk)
    if digest.hexdigest() != sha256:
        raise DecryptionError(f"{label}: decrypted content does not match its recorded sha256")
    return b"".join(parts)


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


def _records(path: Path, *, chunk_size: int, count: int, size: int) -> Iterator[tuple[int, bytes]]:
    last = size - (count - 1) * chunk_size
    with path.open("rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise DecryptionError(f"{path}: not a Shipyard encrypted file (bad header)")
        for index in range(count):
            length = (chunk_size if index < count - 1 else last) + TAG_BYTES
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


def _nonce(index: int) -> bytes:
    return index.to_bytes(NONCE_BYTES, "big")


def _label(version_dir: Path, manifest: Manifest) -> str:
    return f"{manifest.name} version {manifest.version} ({version_dir})"
