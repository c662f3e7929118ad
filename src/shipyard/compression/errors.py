"""Errors raised by compression; all derive from Shipyard's one error base.

ShipyardError
├── UsageError
│   └── CompressionConfigError   a config or its data cannot work for this model
└── CompressionError (422)       a compression tool failed on this model
"""

from __future__ import annotations

from http import HTTPStatus

from shipyard.errors import ShipyardError, UsageError


class CompressionConfigError(UsageError):
    """The requested method, its options or its data do not fit this model."""


class CompressionError(ShipyardError):
    """A compression tool (quantizer, converter, optimizer) failed on this model."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY

    def __init__(self, method: str, problem: str) -> None:
        super().__init__(f"{method}: {problem}")
        self.method = method
        self.problem = problem
