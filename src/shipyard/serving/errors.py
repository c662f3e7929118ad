"""Serving errors: each maps to one HTTP status and says what the caller can do about it.

ShipyardError (shipyard.errors)
├── UsageError (400)
│   ├── ProtocolError (400)        a request that breaks the wire protocol (codecs.errors)
│   └── ModelConfigError (400)     a model.toml that cannot be parsed or validated
├── NotFoundError (404)
│   └── ModelNotFound (404)        no such model, or no such version of it
├── PayloadTooLarge (413)          a request body over the configured limit
├── ModelLoadError (400)           an explicit load left no version able to serve
├── ModelNotReady (503)            the model exists but no version of it can serve now
├── Overloaded (503)               the model's queue is full; retry after `retry_after` s
├── DeadlineExceeded (504)         the request's timeout passed before the model answered
└── ClientGone (400)               the client left while its request waited (no one reads it)
"""

from __future__ import annotations

from http import HTTPStatus

from shipyard.codecs.errors import ProtocolError
from shipyard.errors import NotFoundError, ShipyardError, UsageError

__all__ = [
    "ClientGone",
    "DeadlineExceeded",
    "ModelConfigError",
    "ModelLoadError",
    "ModelNotFound",
    "ModelNotReady",
    "Overloaded",
    "PayloadTooLarge",
    "ProtocolError",
]


class ModelConfigError(UsageError):
    """A model's `model.toml` is not valid TOML or does not follow the model config schema."""


class ModelNotFound(NotFoundError):
    """No model of that name in the repository, or no such version of it."""

    def __init__(self, name: str, version: int | str | None = None) -> None:
        if version is None:
            message = f"model {name!r} is not in the model repository"
        else:
            message = f"model {name!r} has no version {version}"
        super().__init__(message)
        self.name = name
        self.version = version


class ModelNotReady(ShipyardError):
    """The model is known but cannot serve right now (loading, unloaded, or failed)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, name: str, version: int | None = None, *, reason: str = "") -> None:
        what = f"model {name!r}" if version is None else f"model {name!r} version {version}"
        message = f"{what} is not ready" + (f": {reason}" if reason else "")
        super().__init__(message)
        self.name = name
        self.version = version
        self.reason = reason


class Overloaded(ShipyardError):
    """The model's request queue is full; the client should retry after `retry_after` s."""

    status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, name: str, *, queue_size: int, retry_after: int = 1) -> None:
        super().__init__(
            f"model {name!r} is overloaded ({queue_size} requests already queued); "
            f"retry after {retry_after} s or raise max_queue_size in its model.toml"
        )
        self.name = name
        self.queue_size = queue_size
        self.retry_after = retry_after


class DeadlineExceeded(ShipyardError):
    """The request's timeout passed: before its batch ran (it never ran) or while it ran."""

    status = HTTPStatus.GATEWAY_TIMEOUT

    def __init__(self, name: str, *, timeout_us: int, ran: bool) -> None:
        where = "was still running (its outputs are discarded)" if ran else "expired in the queue"
        super().__init__(
            f"model {name!r} did not answer within the request's timeout of {timeout_us} µs: "
            f"it {where if ran else where + ' and never ran'}; send a longer timeout or retry "
            "when the model is less busy"
        )
        self.ran = ran


class ClientGone(ShipyardError):
    """The client closed its connection while its request waited: it is dropped unrun.

    Nobody reads the answer; metrics and audit records name its outcome `cancelled`.
    """

    status = HTTPStatus.BAD_REQUEST

    def __init__(self, name: str) -> None:
        super().__init__(f"model {name!r}: the client disconnected while its request was queued")
        self.name = name


class PayloadTooLarge(ShipyardError):
    """The request body is larger than the server accepts."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE

    def __init__(self, size: int | None, limit: int) -> None:
        size_text = "" if size is None else f" ({size} bytes)"
        super().__init__(
            f"request body{size_text} exceeds the {limit}-byte limit; send smaller batches "
            "or raise SHIPYARD_LIMITS__MAX_BODY_BYTES"
        )
        self.limit = limit


class ModelLoadError(ShipyardError):
    """An explicit load request left the model with no version able to serve."""

    status = HTTPStatus.BAD_REQUEST

    def __init__(self, name: str, reasons: list[str]) -> None:
        detail = "; ".join(reasons) or "no version was selected to load"
        super().__init__(f"failed to load model {name!r}: {detail}")
        self.name = name
        self.reasons = reasons


class AuditUnavailable(ShipyardError):
    """The audit log cannot be written: audited calls are refused until it can (fail closed)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class RolloutError(ShipyardError):
    """A rollout call that does not fit the model's state: it has no rollout, or the rollout
    is already where the call would take it."""

    status = HTTPStatus.CONFLICT
