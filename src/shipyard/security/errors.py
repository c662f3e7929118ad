"""Security errors, all under the one ShipyardError base with the HTTP status a server returns.

ShipyardError
├── UsageError (400)
│   ├── KeyFileError (400)           a key file or variable is missing, malformed or in the way
│   └── KeyRequiredError (400)       an encrypted package was loaded without a key-encryption key
├── PackageError (422)
│   ├── SignatureError (422)         unsigned, signed by another key, or a signed file changed
│   └── DecryptionError (422)        wrong key, or the encrypted model was modified
├── AuthenticationError (401)        no token, or an unknown, revoked or expired one
├── PermissionDeniedError (403)      a valid token whose scopes do not allow the action
└── AuditError (500)                 the audit log cannot be written or its tail is corrupt
"""

from __future__ import annotations

from http import HTTPStatus

from shipyard.errors import PackageError, ShipyardError, UsageError


class KeyFileError(UsageError):
    """A key file or key variable is missing, malformed, or would overwrite an existing key."""


class KeyRequiredError(UsageError):
    """The package is encrypted and no key-encryption key was given."""


class SignatureError(PackageError):
    """The package is unsigned, signed by a different key, or a signed file differs."""

    def __init__(self, message: str, *, files: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.files = files


class DecryptionError(PackageError):
    """The data key cannot be unwrapped (wrong key) or the ciphertext fails authentication."""


class AuthenticationError(ShipyardError):
    """No credentials, or credentials that match no live token."""

    status = HTTPStatus.UNAUTHORIZED


class PermissionDeniedError(ShipyardError):
    """Valid credentials whose scopes do not allow this action on this model."""

    status = HTTPStatus.FORBIDDEN


class AuditError(ShipyardError):
    """The audit log cannot be appended to, or its last record does not verify."""
