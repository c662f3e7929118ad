"""Every HTTP request through the route table: one ASGI step that routes, guards and audits.

For each request, in order (`routes.ROUTES` says what each route needs):

1. match the path once (`RouteTable.find`, memoised);
2. an audited route (infer, admin) answers 503 while the audit log cannot be written;
3. with auth, the route's scope must be granted: 401/403 with `WWW-Authenticate`;
4. a declared Content-Length over the route's body limit is 413 before a byte is read (the
   limit is kept in the scope for `read_body`, which enforces it while reading);
5. no route: 404; a route without this method: 405 with `Allow`;
6. the handler runs with the call's context in the scope; an audited call becomes one event
   (who, status, bytes in and out, latency) through `DataPlane.events`, emitted before the
   response's last body is sent (waiting for room when the audit backlog is full).

While the server drains, every response says `Connection: close`, so clients open a new
connection for their next request (refused once the listener closes) instead of reusing one
the server is about to close (`extra_headers`, which the request-id layer adds with the
request id in one `send` wrapper).

It sits inside the request-id middleware and replaces a router: inference, nearly all of a
server's traffic, costs one memoised look-up and no per-route regular expressions. Steps 1-4
and the set-up of 6 are methods (`match`, `admit`, `enter`, `finishes`) that V2 inference
answered from the protocol (`http.direct`) takes in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import NamedTuple

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from shipyard.codecs.limits import DecodeLimits
from shipyard.errors import ShipyardError
from shipyard.serving.calls import ANONYMOUS, Call, CallContext
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.http.common import (
    BODY_LIMIT,
    CALL,
    DECODE_LIMITS,
    Handler,
    auth_error_response,
    client_of,
    declared_refusal,
    error_response,
    header,
    header_lines,
    json_response,
)
from shipyard.serving.logs import request_id
from shipyard.serving.peers import current_worker
from shipyard.serving.routes import Route
from shipyard.serving.routing import TABLE, Found, RouteTable, unrouted_access
from shipyard.serving.security import ServerSecurity

PROTOCOLS = {"v2.": "v2_http", "tf.": "tfserving_http", "openai.": "openai_http"}
"""Handler-name prefix -> the protocol a call's context names."""


class HttpDispatcher:
    """ASGI app for HTTP requests: the route table's dispatcher (innermost)."""

    def __init__(
        self,
        *,
        handlers: Mapping[str, Handler],
        dataplane: DataPlane,
        security: ServerSecurity,
        metrics_require_auth: bool = True,
        table: RouteTable = TABLE,
    ) -> None:
        missing = sorted({r.handler for r in table.routes} - set(handlers))
        if missing:
            raise ValueError(f"route handlers not bound: {missing}")
        self.handlers = dict(handlers)
        self.dataplane = dataplane
        self.guard = security.guard
        self.audit = security.audit
        self.metrics_require_auth = metrics_require_auth
        self.table = table
        self.worker = current_worker()
        """Under `--workers N`: this worker's number, sent as `X-Shipyard-Worker`."""
        named = [] if self.worker is None else [(b"x-shipyard-worker", str(self.worker).encode())]
        self._serving_headers = named
        self._draining_headers = [*named, (b"connection", b"close")]
        self._serving = (named, header_lines(named))
        self._draining = (self._draining_headers, header_lines(self._draining_headers))

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers every response gets now (`RequestContextMiddleware` adds them, replacing
        any of the same name): `X-Shipyard-Worker` under `--workers N`, and while the server
        drains `Connection: close`, so a client does not reuse a connection that is about to
        close (a request sent on an idle keep-alive connection as the server closes it is
        lost, and POSTs are not retried)."""
        # The same lists each time (the middleware copies them): built once.
        return self._draining_headers if self.dataplane.draining else self._serving_headers

    def extra_now(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """`extra_headers()`, and the same as response head lines (`common.header_lines`)."""
        return self._draining if self.dataplane.draining else self._serving

    def match(self, scope: Scope) -> tuple[Found | None, Route | None, str]:
        """Step 1: the path's routes, the route of the request's method, and the path
        (without the root path)."""
        path = scope["path"]
        root = scope.get("root_path")
        if root and path.startswith(root):
            path = path[len(root) :]
        found = self.table.find(path)
        return found, found.route(scope["method"]) if found is not None else None, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found, route, path = self.match(scope)
        admitted = self.admit(scope, found, route, path)
        if isinstance(admitted, Response):
            await admitted(scope, receive, send)
            return
        if found is None or route is None:
            await self._no_route(found, scope)(scope, receive, send)
            return
        handler = self.handlers[route.handler]
        call = self.enter(scope, found, route, admitted)
        if call is None:
            response = await handler(Request(scope, receive, send))
            await response(scope, receive, send)
            return
        await self._audited(call, handler, scope, receive, send)

    def enter(self, scope: Scope, found: Found, route: Route, admitted: Admitted) -> Call | None:
        """Step 6's set-up: what the handler reads from the scope (path parameters, body and
        codec limits, the call), and the audited call it is (None: not audited)."""
        scope["path_params"] = found.params
        scope[BODY_LIMIT] = admitted.limit
        scope[DECODE_LIMITS] = admitted.decoding
        if route.audit is None or not self.dataplane.events.listeners:
            return None
        context = CallContext(
            principal=admitted.who,
            request_id=request_id.get() or None,
            protocol=_protocol(route.handler),
            client=client_of(scope),
            route=f"{scope['method']} {scope['path']}",
        )
        call = self.dataplane.events.open(
            context, action=route.audit, model=admitted.model, version=None
        )
        if call is not None:
            scope[CALL] = call
        return call

    def finishes(self, status: int) -> bool:
        """Whether an audited call that answered `status` is recorded as one (a refusal
        of its credentials is recorded by the guard as auth.denied instead)."""
        return status not in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)

    def admit(
        self, scope: Scope, found: Found | None, route: Route | None, path: str
    ) -> Response | Admitted:
        """Steps 2-4: the refusal to answer with, or who the caller is and the body limit."""
        if found is not None:
            access = found.access(metrics_require_auth=self.metrics_require_auth)
            audited = (route or next(iter(found.routes.values()))).audit is not None
        else:
            access, audited = unrouted_access(path), False
        if audited and self.audit is not None and (closed := self.audit.refusal()) is not None:
            # fail closed: an audited call the log cannot record is not served at all
            return json_response({"error": closed}, 503, {"Retry-After": "1"})
        who = ANONYMOUS
        if self.guard is not None and access is not None:
            try:
                who = self.guard.check(
                    header(scope, b"authorization"),
                    access,
                    route=f"{scope['method']} {scope['path']}",
                    client=client_of(scope),
                ).name
            except ShipyardError as exc:
                return auth_error_response(exc)
        model = access.named_model if access is not None else None
        body_model = model if route is None or route.body == "model" else None
        limits, decoding = self.dataplane.both_limits_for(body_model)
        limit = limits.max_body_bytes
        refusal = declared_refusal(scope, limit)
        if refusal is not None:
            return error_response(refusal)
        return Admitted(who, model, limit, decoding if body_model is not None else None)

    async def _audited(
        self, call: Call, handler: Handler, scope: Scope, receive: Receive, send: Send
    ) -> None:
        status, bytes_in, bytes_out = 500, 0, 0
        finished = False

        async def finish() -> None:
            nonlocal finished
            if finished:
                return
            finished = True
            if self.finishes(status):
                await self.dataplane.events.finish(
                    call, status=status, bytes_in=bytes_in, bytes_out=bytes_out
                )

        async def counting_receive() -> Message:
            nonlocal bytes_in
            message = await receive()
            if message["type"] == "http.request":
                bytes_in += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, bytes_out
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                bytes_out += len(message.get("body", b""))
                if not message.get("more_body", False):
                    await finish()  # the record is queued before the response is complete
            await send(message)

        try:
            response = await handler(Request(scope, counting_receive, counting_send))
            await response(scope, counting_receive, counting_send)
        finally:
            await finish()  # the handler failed before its last body

    def _no_route(self, found: Found | None, scope: Scope) -> Response:
        """405 with `Allow` for a path served under other methods, else 404."""
        if found is not None:
            allowed = found.allowed
            message = f"{scope['method']} is not allowed on {scope['path']}; use {allowed}"
            return json_response({"error": message}, 405, {"Allow": allowed})
        self.dataplane.metrics.observe_not_found("route")
        return json_response({"error": f"no such endpoint: {scope['path']}"}, 404)


class Admitted(NamedTuple):
    who: str
    """The token's name, or ANONYMOUS."""
    model: str | None
    """The model the route's scope names, if one."""
    limit: int
    """The route's body limit in bytes."""
    decoding: DecodeLimits | None
    """The codec limits of the model the body is for (None: the route's body is not)."""


def _protocol(handler: str) -> str:
    for prefix, protocol in PROTOCOLS.items():
        if handler.startswith(prefix):
            return protocol
    return "http"
