"""Request limits in the server: the body-size gate (the rest is the data plane's).

The server's `limits` settings apply to every model; a model's `model.toml` `[limits]`
overrides single fields, merged once when a version loads (`version_config.resolve`,
asked through `DataPlane.limits_for`). They are enforced, outside in, by:

- `BodyLimitMiddleware`: a Content-Length over the route's model's `max_body_bytes` is 413
  before a byte is read, and a body that streams past it is cut off with 413;
- `read_body` (protocols/http.py): the same limit after gzip/deflate decompression;
- the codecs, given the version's `DataPlane.decode_limits_for(...)`: JSON depth, elements
  per tensor and per request, BYTES element size, declared sizes against the body — all
  before allocating;
- the data plane, with `version_config.check_output_size`: a response's tensors against
  `max_output_bytes`.

Every refusal is a `ShipyardError` with a 4xx status and a message naming the limit.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipyard.errors import ShipyardError
from shipyard.serving.errors import PayloadTooLarge, ProtocolError
from shipyard.serving.protocols.http import error_response

__all__ = ["BodyLimitMiddleware"]


LimitFor = Callable[[str], int]
"""path -> the body limit (bytes) for the model that path names, else the server's."""


class BodyLimitMiddleware:
    """413 for a body over the route's limit: by Content-Length first, then while streaming."""

    def __init__(self, app: ASGIApp, *, limit_for: LimitFor) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = chunked = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = bytes(value).decode("latin-1").strip()
            elif key == b"transfer-encoding":
                chunked = value
        refusal: ShipyardError | None = None
        if declared is not None and not declared.isdigit():
            refusal = ProtocolError(f"Content-Length {declared!r} is not a number")
        elif declared is not None and int(declared) > limit:
            refusal = PayloadTooLarge(int(declared), limit)
        if refusal is not None:
            await error_response(refusal)(scope, receive, send)
            return
        if declared is not None and chunked is None:
            # The HTTP server delivers exactly Content-Length bytes, already checked: nothing
            # to count, so no per-message wrappers (a measurable cost on every request).
            await self.app(scope, receive, send)
            return
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(None, limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except PayloadTooLarge as exc:
            if started:  # too late to answer; let the server drop the connection
                raise
            await error_response(exc)(scope, receive, send)
