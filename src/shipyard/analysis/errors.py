"""Errors raised by analysis; all derive from Shipyard's one error base.

ShipyardError
├── UsageError
│   ├── AnalysisDataError      the eval data does not fit the model (columns, dtypes, rows)
│   └── AnalysisConfigError    the eval config (TOML) or an option cannot work
└── ValidationFailed (422)     the model was evaluated and missed a threshold (bless)
"""

from __future__ import annotations

from http import HTTPStatus

from shipyard.errors import ShipyardError, UsageError


class AnalysisDataError(UsageError):
    """Evaluation data that does not fit the model's inputs, or labels that are missing."""


class AnalysisConfigError(UsageError):
    """An eval config or option that cannot work (unknown metric, bad TOML, bad slice)."""


class ValidationFailed(ShipyardError):
    """The candidate was evaluated and missed at least one threshold."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
