"""The one exception hierarchy of Shipyard; every error carries an HTTP status.

ShipyardError (500)
├── UsageError (400)                 a caller passed something that cannot work
│   ├── InputError (400)             inference input does not match the signature
│   └── UnsupportedModelError (400)  no importer knows this object or file
├── NotFoundError (404)              a model, version or file that does not exist
├── PackageError (422)               a package on disk is not loadable
│   ├── ManifestError (422)          manifest missing, not JSON, or schema-invalid
│   ├── FormatVersionError (422)     manifest written by a newer Shipyard
│   └── IntegrityError (422)         a file is missing, has the wrong size or hash
├── ConversionError (422)            converted model disagrees with the original
├── UnsafePickleError (422)          a pickle names globals outside the allowlist
└── RuntimeBackendError (500)        the inference backend failed
"""

from __future__ import annotations

from http import HTTPStatus


class ShipyardError(Exception):
    """Base of every error Shipyard raises on purpose."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(ShipyardError):
    status = HTTPStatus.BAD_REQUEST


class InputError(UsageError):
    """Inference input that does not fit the model's signature."""


class UnsupportedModelError(UsageError):
    """No importer can handle the given object or file."""


class NotFoundError(ShipyardError):
    status = HTTPStatus.NOT_FOUND


class PackageError(ShipyardError):
    status = HTTPStatus.UNPROCESSABLE_ENTITY


class ManifestError(PackageError):
    """The manifest is missing, not JSON, or does not follow the schema."""


class FormatVersionError(PackageError):
    """The package was written by a newer Shipyard with a format this one cannot read."""


class IntegrityError(PackageError):
    """A packaged file is missing or does not match its recorded size or hash."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class ConversionError(ShipyardError):
    """The converted ONNX model does not reproduce the original within tolerance."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class UnsafePickleError(ShipyardError):
    """A pickle-based file names globals outside the allowlist, or cannot be fully parsed."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class RuntimeBackendError(ShipyardError):
    """The inference backend (ONNX Runtime) failed to create a session or run."""
