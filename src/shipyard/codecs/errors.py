"""The codec error: a body or header that does not follow the wire protocol (HTTP 400)."""

from __future__ import annotations

from shipyard.errors import UsageError


class ProtocolError(UsageError):
    """The request body or headers do not follow the protocol (bad JSON, sizes, types)."""
