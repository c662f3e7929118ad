"""Package signing and encryption, API tokens and the audit log (signing loads lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shipyard.security.audit_chain import AuditHead, AuditVerification, verify_log
from shipyard.security.audit_log import AuditLog
from shipyard.security.encryption import decrypt_model_bytes, encrypt_version, rewrap
from shipyard.security.errors import (
    AuditError,
    AuthenticationError,
    DecryptionError,
    KeyFileError,
    KeyRequiredError,
    PermissionDeniedError,
    SignatureError,
)
from shipyard.security.keys import KeyPaths, init_keys, load_audit_key, load_kek, read_secret
from shipyard.security.tokens import Principal, Scope, TokenStore, bearer_token

if TYPE_CHECKING:
    from shipyard.security.signing import VerifiedSignature, sign_version, verify_version

__all__ = [
    "AuditError",
    "AuditHead",
    "AuditLog",
    "AuditVerification",
    "AuthenticationError",
    "DecryptionError",
    "KeyFileError",
    "KeyPaths",
    "KeyRequiredError",
    "PermissionDeniedError",
    "Principal",
    "Scope",
    "SignatureError",
    "TokenStore",
    "VerifiedSignature",
    "bearer_token",
    "decrypt_model_bytes",
    "encrypt_version",
    "init_keys",
    "load_audit_key",
    "load_kek",
    "read_secret",
    "rewrap",
    "sign_version",
    "verify_log",
    "verify_version",
]

_SIGNING = {"VerifiedSignature", "sign_version", "verify_version"}


def __getattr__(name: str) -> Any:
    # model_signing pulls in sigstore (~0.5 s); only pay for it when signing is used.
    if name in _SIGNING:
        from shipyard.security import signing

        return getattr(signing, name)
    raise AttributeError(f"module 'shipyard.security' has no attribute {name!r}")
