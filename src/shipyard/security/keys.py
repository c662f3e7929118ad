"""Key material: create a signing keypair and secret keys (0600), read secrets from files or env."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shipyard.security.errors import KeyFileError
from shipyard.security.fileio import check_private

SECRET_BYTES = 32
KEK_ENV = "SHIPYARD_KEK"
AUDIT_KEY_ENV = "SHIPYARD_AUDIT_KEY"
SIGNING_KEY_NAME = "signing.pem"
PUBLIC_KEY_NAME = "signing.pub"
DATA_KEY_NAME = "data.key"
AUDIT_KEY_NAME = "audit.key"


@dataclass(frozen=True)
class KeyPaths:
    """The files `init_keys` wrote."""

    directory: Path
    signing_key: Path
    public_key: Path
    data_key: Path
    audit_key: Path


def init_keys(directory: str | Path, *, password: bytes | None = None) -> KeyPaths:
    """Write an EC P-256 signing keypair, a key-encryption key and an audit key (all 0600).

    P-256 rather than Ed25519 because OpenSSF model-signing's key-based signer accepts only
    the NIST curves P-256/384/521. Existing key files are never overwritten.
    """
    directory = Path(directory)
    paths = KeyPaths(
        directory=directory,
        signing_key=directory / SIGNING_KEY_NAME,
        public_key=directory / PUBLIC_KEY_NAME,
        data_key=directory / DATA_KEY_NAME,
        audit_key=directory / AUDIT_KEY_NAME,
    )
    targets = (paths.signing_key, paths.public_key, paths.data_key, paths.audit_key)
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise KeyFileError(
            f"refusing to overwrite existing key files {existing}; choose another --dir "
            "or move them away first"
        )
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        directory.chmod(0o700)  # mkdir's mode is filtered by the umask
    private = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    _write_new(
        paths.signing_key,
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        ),
    )
    _write_new(
        paths.public_key,
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    _write_new(paths.data_key, encode_secret(os.urandom(SECRET_BYTES)).encode() + b"\n")
    _write_new(paths.audit_key, encode_secret(os.urandom(SECRET_BYTES)).encode() + b"\n")
    return paths


def new_secret() -> bytes:
    """A fresh 256-bit secret key."""
    return os.urandom(SECRET_BYTES)


def encode_secret(secret: bytes) -> str:
    """The text form used in key files and environment variables (standard base64)."""
    return base64.b64encode(secret).decode("ascii")


def decode_secret(text: str | bytes, *, source: str) -> bytes:
    """Parse a base64 secret; `source` names where it came from for the error message."""
    try:
        secret = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(f"{source}: not base64 (expected {SECRET_BYTES} bytes, base64)") from exc
    if len(secret) != SECRET_BYTES:
        raise KeyFileError(
            f"{source}: holds {len(secret)} bytes, expected {SECRET_BYTES} "
            "(create one with `shipyard keys init`)"
        )
    return secret


def read_secret(path: str | Path) -> bytes:
    """Read a 256-bit secret from a key file: base64 text, or exactly 32 raw bytes.

    A key file that group or others may read or write is refused (InsecurePermissionsError).
    """
    path = Path(path)
    check_private(path, what="key file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise KeyFileError(f"{path}: key file not found") from exc
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file ({exc.strerror})") from exc
    if len(raw) == SECRET_BYTES and not _is_base64_text(raw):
        return raw
    return decode_secret(raw, source=str(path))


def load_secret(*, file: str | Path | None, env: str, what: str) -> bytes:
    """The secret from `file` if given, else from environment variable `env`."""
    if file is not None:
        return read_secret(file)
    value = os.environ.get(env)
    if value:
        return decode_secret(value, source=f"${env}")
    raise KeyFileError(f"no {what}: pass --key-file or set {env} (base64 of {SECRET_BYTES} bytes)")


def load_kek(file: str | Path | None = None) -> bytes:
    """The key-encryption key from a file, else from $SHIPYARD_KEK."""
    return load_secret(file=file, env=KEK_ENV, what="key-encryption key")


def load_audit_key(file: str | Path | None = None) -> bytes:
    """The audit-log HMAC key from a file, else from $SHIPYARD_AUDIT_KEY."""
    return load_secret(file=file, env=AUDIT_KEY_ENV, what="audit key")


def kek_from_env() -> bytes | None:
    """$SHIPYARD_KEK decoded, or None when it is unset."""
    value = os.environ.get(KEK_ENV)
    return decode_secret(value, source=f"${KEK_ENV}") if value else None


def key_id(secret: bytes) -> str:
    """A short public identifier of a secret key (domain-separated SHA-256, 16 hex digits)."""
    return hashlib.sha256(b"shipyard/key-id/v1\0" + secret).hexdigest()[:16]


def _is_base64_text(raw: bytes) -> bool:
    try:
        return len(base64.b64decode(raw.strip(), validate=True)) == SECRET_BYTES
    except (binascii.Error, ValueError):
        return False


def _write_new(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key") from exc
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
