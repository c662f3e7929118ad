"""HTTP plumbing every REST transport shares: bounded bodies, errors, request ids, gzip.

- The body limit, in one place: the dispatcher resolves a route's limit once and refuses a
  declared Content-Length over it (`declared_refusal`); `read_body` enforces the same limit
  while reading and after decompressing a `Content-Encoding: gzip|deflate` body (a
  compressed bomb stops at the limit).
- `endpoint` turns a handler's `ShipyardError` into `{"error": message}` with its status
  (and `Retry-After` for `Overloaded`); anything unexpected becomes a logged 500 that
  names the request id, never a traceback.
- `RequestContextMiddleware` (plain ASGI) gives each request an id (`X-Request-ID` from the
  client, else a new one), echoes it, and optionally writes an access log line.
"""

from __future__ import annotations

import functools
import gzip
import logging
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipyard.codecs.limits import DecodeLimits
from shipyard.errors import NotFoundError, ShipyardError
from shipyard.serving.calls import Call
from shipyard.serving.errors import ModelNotFound, Overloaded, PayloadTooLarge, ProtocolError
from shipyard.serving.logs import request_id
from shipyard.serving.metrics import Metrics

if TYPE_CHECKING:
    from shipyard.serving.dataplane import DataPlane

log = logging.getLogger("shipyard.serving.http")
access_log = logging.getLogger("shipyard.serving.access")

Handler = Callable[[Request], Awaitable[Response]]

BODY_LIMIT = "shipyard.body_limit"
"""Scope key: the route's body limit in bytes (set by the dispatcher, read by `read_body`)."""
DECODE_LIMITS = "shipyard.decode_limits"
"""Scope key: the codec limits of the model a request's body is for, found with the body
limit at admission (None where the route's body is not a model's); `decode_limits_of`."""
CALL = "shipyard.call"
"""Scope key: the audited `calls.Call` this request is (absent when not audited)."""
HEADER_TABLE = "shipyard.headers"
"""Scope key: the request's headers as a dict, name -> first value (built by `header`)."""
CLIENT_GONE = "shipyard.client_gone"
"""Scope key: a callable, true once the request's connection is closed (set by the guarded
protocol, `http.guard`; absent under other servers)."""


def header_of(scope: Scope) -> Callable[[str], str | None]:
    """Looks up one of the request's headers by name (a canary's sticky header)."""

    def lookup(name: str) -> str | None:
        return header(scope, name.lower().encode("latin-1"))

    return lookup


class BytesResponse(Response):
    """A Starlette `Response` of ready bytes, built without Starlette's header pass.

    `Response.__init__` renders the content and then scans the headers given for
    Content-Length and Content-Type, lower-casing each; for the bytes every API answer is,
    that pass was a measured share of a small model's request. Headers given are sent as
    they are (lower-cased), after Content-Length and Content-Type.
    """

    def __init__(
        self,
        content: bytes,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str = "application/json",
    ) -> None:
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.body = content
        raw = [
            (b"content-length", str(len(content)).encode("latin-1")),
            (b"content-type", media_type.encode("latin-1")),
        ]
        if headers:
            raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.raw_headers = raw


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return BytesResponse(orjson.dumps(doc), status, headers)


def error_response(exc: ShipyardError) -> Response:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Overloaded) else None
    return json_response({"error": exc.message}, int(exc.status), headers)


def endpoint(handler: Handler, *, metrics: Metrics | None = None) -> Handler:
    """Wrap a route handler so every failure is a JSON error response with the right status.

    With `metrics`, each ModelNotFound is counted as `shipyard_not_found_total{kind=model|
    version}` and any other NotFoundError (a path no route means) as kind=route."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            return failure_response(exc, request.scope, metrics=metrics)

    return wrapped


def failure_response(exc: Exception, scope: Scope, *, metrics: Metrics | None) -> Response:
    """The answer to a handler's exception (`endpoint`, and `http.direct`'s inference): a
    `ShipyardError` is its status and message (not-found kinds counted with `metrics`);
    anything else is logged with its traceback and answered with a 500 naming the request."""
    if isinstance(exc, ShipyardError):
        if metrics is not None and isinstance(exc, NotFoundError):
            if isinstance(exc, ModelNotFound):
                kind = "model" if exc.version is None else "version"
            else:
                kind = "route"
            metrics.observe_not_found(kind)
        return error_response(exc)
    log.exception("unexpected error in %s %s", scope["method"], scope["path"], exc_info=exc)
    return internal_error_response(request_id.get())


def internal_error_response(rid: str | None) -> Response:
    """The 500 for a bug, never the request's fault: one line naming the request id."""
    return json_response(
        {"error": f"internal server error (request id {rid}); see the server log"}, 500
    )


def auth_error_response(exc: ShipyardError) -> Response:
    """A refusal with its challenge: 401 `Bearer realm`, 403 also `error="insufficient_scope"`."""
    response = error_response(exc)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="shipyard"'
    elif exc.status == 403:
        response.headers["WWW-Authenticate"] = 'Bearer realm="shipyard", error="insufficient_scope"'
    return response


def call_of(scope: Scope) -> Call | None:
    """The audited call this request is, to pass to the data plane (None: not audited)."""
    call: Call | None = scope.get(CALL)
    return call


def decode_limits_of(scope: Scope, dataplane: DataPlane, name: str) -> DecodeLimits:
    """The codec limits for a body sent to model `name`: those admission found, else the
    data plane's answer now."""
    limits: DecodeLimits | None = scope.get(DECODE_LIMITS)
    return limits if limits is not None else dataplane.decode_limits_for(name)


def gone_of(scope: Scope) -> Callable[[], bool] | None:
    """Whether the request's client has left, as a probe (None: the server cannot tell)."""
    gone: Callable[[], bool] | None = scope.get(CLIENT_GONE)
    return gone


def client_of(scope: Scope) -> str | None:
    """The caller's `host:port` ([host]:port for IPv6), None when the server does not say."""
    client = scope.get("client")
    if not client:
        return None
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower-case bytes), None when absent.

    Servers give header names lower-cased (ASGI). The first look-up builds a dict of the
    request's headers (the first value of a repeated name wins, as a scan finds it) kept in
    the scope, so each request's several look-ups are one dict look-up each, where
    Starlette's `request.headers.get` lower-cases every name again on each look-up."""
    table: dict[bytes, bytes] | None = scope.get(HEADER_TABLE)
    if table is None:
        table = scope[HEADER_TABLE] = dict(reversed(list(scope["headers"])))
    value = table.get(name)
    return None if value is None else bytes(value).decode("latin-1")


def declared_refusal(scope: Scope, limit: int) -> ShipyardError | None:
    """The error for a Content-Length that is not a number or is over `limit`, else None."""
    value = header(scope, b"content-length")
    if value is None:
        return None
    declared = value.strip()
    if not declared.isdigit():
        return ProtocolError(f"Content-Length {declared!r} is not a number")
    if int(declared) > limit:
        return PayloadTooLarge(int(declared), limit)
    return None


async def read_body(request: Request) -> bytes:
    """The request body, decompressed if needed; PayloadTooLarge past the route's limit."""
    return await read_body_from(request.scope, request.receive)


async def read_body_from(scope: Scope, receive: Receive) -> bytes:
    """`read_body` from an ASGI scope and its `receive`."""
    limit: int = scope[BODY_LIMIT]
    # read as Request.stream() does, without its async generator
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(None, limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return body_of(scope, chunks)


def body_of(scope: Scope, chunks: list[bytes]) -> bytes:
    """The body that arrived as `chunks` (all of it), decompressed if needed;
    PayloadTooLarge past the route's limit."""
    limit: int = scope[BODY_LIMIT]
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(body) > limit:
        raise PayloadTooLarge(None, limit)
    encoding = (header(scope, b"content-encoding") or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(
            f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none"
        )
    return _decompress(body, gzip_format=encoding == "gzip", limit=limit)


def _decompress(body: bytes, *, gzip_format: bool, limit: int) -> bytes:
    decoder = zlib.decompressobj(wbits=31 if gzip_format else 15)
    try:
        data = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(
            f"body is not valid {'gzip' if gzip_format else 'deflate'} data ({exc})"
        ) from None
    if len(data) > limit or decoder.unconsumed_tail:
        raise PayloadTooLarge(None, limit)
    return data


def compress_for(scope: Scope, body: bytes, *, min_bytes: int) -> tuple[bytes, dict[str, str]]:
    """Compress a response body of `min_bytes` or more when the client accepts gzip/deflate."""
    accepted = header(scope, b"accept-encoding") or ""
    if len(body) < max(min_bytes, 1) or not accepted:
        return body, {}
    if "gzip" in accepted:
        return gzip.compress(body, compresslevel=1), {"Content-Encoding": "gzip"}
    if "deflate" in accepted:
        return zlib.compress(body, 1), {"Content-Encoding": "deflate"}
    return body, {}


def request_id_for(scope: Scope) -> str:
    """The request's id: its `X-Request-ID` (at most 64 characters), else a new one."""
    incoming = header(scope, b"x-request-id")
    # 64 random bits as 16 hex digits, as uuid4().hex[:16] gave, without its os.urandom
    # system call per request (a measurable share of a tiny model's request).
    return incoming[:64] if incoming else f"{random.getrandbits(64):016x}"


RawHeaders = list[tuple[bytes, bytes]]


def header_lines(headers: RawHeaders) -> bytes:
    """Headers as they go into a response head: `name: value\r\n` each."""
    return b"".join([b"%b: %b\r\n" % pair for pair in headers])


def with_added(headers: RawHeaders, added: RawHeaders) -> RawHeaders:
    """A response's headers with `added` (the request id, `extra_headers`) at the end;
    beyond the request id, the added names replace any of the app's of the same name."""
    if len(added) > 1:
        names = {name for name, _ in added}
        headers = [(k, v) for k, v in headers if k.lower() not in names]
    return [*headers, *added]


class RequestContextMiddleware:
    """Assigns a request id (X-Request-ID), echoes it, and logs access lines if asked.

    The outermost layer of every HTTP request: an exception that escapes the app (handlers
    answer their own errors through `endpoint`) is logged with its traceback and answered
    with a JSON 500 naming the request id, if no response has started."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        access_log: bool = False,
        extra_headers: Callable[[], list[tuple[bytes, bytes]]] | None = None,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.extra_headers = extra_headers
        """Headers for every response, asked at each request's start; they replace any of
        the same name the app sets (`HttpDispatcher.extra_headers`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_for(scope)
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 0
        added = [(b"x-request-id", rid.encode("latin-1"))]
        if self.extra_headers is not None:
            added += self.extra_headers()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = with_added(message.get("headers", []), added)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unexpected error in %s %s", scope["method"], scope["path"])
            if status:
                raise  # the response has begun: uvicorn closes the connection
            await internal_error_response(rid)(scope, receive, send_with_id)
        finally:
            if self.access_log:
                ms = (time.perf_counter() - started) * 1000
                client = scope.get("client")
                access_log.info(
                    "%s %s %d %.2fms",
                    scope["method"],
                    scope["path"],
                    status or 500,
                    ms,
                    extra={  # structured: JSON logs get each as a key (logs.ACCESS_FIELDS)
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status or 500,
                        "duration_ms": round(ms, 3),
                        "client": f"{client[0]}:{client[1]}" if client else None,
                    },
                )
            request_id.reset(token)
