"""Codec errors: a body or header that breaks the wire protocol (400) or a decode limit (413)."""

from __future__ import annotations

from http import HTTPStatus

from shipyard.errors import UsageError


class ProtocolError(UsageError):
    """The request body or headers do not follow the protocol (bad JSON, sizes, types)."""


class RequestTooLarge(ProtocolError):
    """The request asks for more than a decode limit allows (elements, nesting, BYTES size)."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
