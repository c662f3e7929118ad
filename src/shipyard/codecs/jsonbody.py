"""A wire body parsed as a JSON object, or a ProtocolError (400) saying why it is not one."""

from __future__ import annotations

from typing import Any

import orjson

from shipyard.codecs.errors import ProtocolError


def load_object(body: bytes | memoryview, *, what: str) -> dict[str, Any]:
    """The body as a JSON object, or a ProtocolError saying why not."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc
