"""The encrypted file format: MAGIC, then one AES-256-GCM record (ciphertext ‖ tag) per chunk.

Kept apart from the envelope (`shipyard.security.encryption`: keys, manifest, which files)
so the model, its external data and its processing assets share one audited reader and
writer. A chunk's nonce is its index; the caller's associated data binds each chunk to its
place (package, version, index, count, file), so reordered, truncated or transplanted
chunks fail to authenticate.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shipyard.errors import IntegrityError
from shipyard.security.errors import DecryptionError
from shipyard.security.fileio import copy_mode

MAGIC = b"SHPYENC1"
TAG_BYTES = 16
NONCE_BYTES = 12

AdFor = Callable[[int, int], bytes]
"""(chunk index, chunk count) -> the chunk's associated data."""


@dataclass(frozen=True)
class Encrypted:
    chunk_count: int
    plaintext_sha256: str
    plaintext_size: int


def encrypted_size(plaintext_size: int, chunk_count: int) -> int:
    return len(MAGIC) + plaintext_size + TAG_BYTES * chunk_count


def encrypt_file(
    plain: Path,
    target: Path,
    aead: AESGCM,
    ad_for: AdFor,
    *,
    chunk_size: int,
    expected_sha256: str,
) -> Encrypted:
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
                out.write(aead.encrypt(nonce(index), chunk, ad_for(index, count)))
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
    return Encrypted(count, digest.hexdigest(), size)


def decrypt_file(
    path: Path,
    aead: AESGCM,
    ad_for: AdFor,
    *,
    count: int,
    chunk_size: int,
    size: int,
    sha256: str,
    label: str,
) -> bytes:
    """The plaintext of `path`, in memory; DecryptionError (naming `label`) on any tampering."""
    expected = encrypted_size(size, count)
    actual = path.stat().st_size
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing data"
        raise DecryptionError(f"{label} is {actual} bytes, expected {expected} ({problem})")
    parts: list[bytes] = []
    digest = hashlib.sha256()
    for index, record in _records(path, chunk_size=chunk_size, count=count, size=size):
        try:
            chunk = aead.decrypt(nonce(index), record, ad_for(index, count))
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


def nonce(index: int) -> bytes:
    return index.to_bytes(NONCE_BYTES, "big")
