"""V2 inference answered from the HTTP protocol, without the ASGI layers around it.

Inference is nearly all of a server's traffic, and for a small model the layers between
uvicorn's protocol and the data plane were a measured share of a request's CPU: the
request-id middleware and the dispatcher each wrapping `send`, a Starlette `Request` and
`Response`, the ASGI start and body messages and the handler's error wrapper.

The guarded protocol (`http.guard`) asks `DirectInfer.match` when a request's headers are
complete; a POST to a V2 infer route is answered by `DirectInfer.serve` in a
`cycle.DirectCycle` (queued and pipelined as any request), every other request goes to
the ASGI app. `serve` takes the ASGI path's steps with the same functions, in the same
order, so the answers are the same:

1. the request id (`common.request_id_for`, as `RequestContextMiddleware`), and the
   headers every response gets (`HttpDispatcher.extra_headers`: worker, draining);
2. admission: audit log writable, credentials and scope, declared body size
   (`HttpDispatcher.admit`), then the scope's limits and the audited call
   (`HttpDispatcher.enter`);
3. the body (`common.body_of` on what has arrived, `common.read_body_from` while more is
   to come) and the work (`V2Handlers.answer`);
4. a failure answered as `endpoint` answers it (`common.failure_response`), and an
   unexpected one as the middleware does (a logged 500 naming the request id);
5. an audited call recorded before its response is written, with the same status and
   byte counts (`HttpDispatcher.finishes`: not for 401/403).

Not taken (the ASGI path answers instead): with the access log on (`--access-log`), and
behind trusted proxies (uvicorn wraps the app in its proxy-headers middleware, which
rewrites the client address this path would not see).
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

from starlette.responses import Response
from starlette.types import Message, Receive, Scope

from shipyard.serving.calls import Call
from shipyard.serving.http.common import (
    RawHeaders,
    body_of,
    failure_response,
    header_lines,
    internal_error_response,
    read_body_from,
    request_id_for,
    with_added,
)
from shipyard.serving.http.cycle import DirectCycle
from shipyard.serving.http.dispatch import HttpDispatcher
from shipyard.serving.http.v2 import V2Handlers
from shipyard.serving.logs import request_id
from shipyard.serving.routes import Route
from shipyard.serving.routing import Found

log = logging.getLogger("shipyard.serving.http")

INFER = "v2.infer"
"""The handler of the routes answered here."""


class Target(NamedTuple):
    """A request's route, as the dispatcher matched it."""

    found: Found
    route: Route
    path: str
    """The path without the root path."""


class DirectInfer:
    """V2 inference for the guarded protocol: `match` at the headers, `serve` after."""

    def __init__(self, dispatcher: HttpDispatcher, handlers: V2Handlers) -> None:
        self.dispatcher = dispatcher
        self.handlers = handlers
        self.metrics = handlers.dataplane.metrics
        self.events = handlers.dataplane.events

    def match(self, scope: Scope) -> Target | None:
        """The request's route when this path answers it, else None (the ASGI app does)."""
        if scope["method"] != "POST":
            return None
        found, route, path = self.dispatcher.match(scope)
        if found is None or route is None or route.handler != INFER:
            return None
        return Target(found, route, path)

    async def serve(self, cycle: DirectCycle) -> None:
        """Answer the cycle's request (its `target` is `match`'s answer)."""
        received = time.perf_counter_ns()
        scope: Scope = cycle.scope  # type: ignore[assignment]
        rid = request_id_for(scope)
        request_id.set(rid)  # the cycle's own task: the value ends with it
        added = _Added(rid.encode("latin-1"), *self.dispatcher.extra_now())
        try:
            await self._answer(cycle, scope, received, added)
        except Exception:
            log.exception("unexpected error in %s %s", scope["method"], scope["path"])
            if cycle.response_started:
                raise  # the response has begun: uvicorn closes the connection
            await _send(cycle, internal_error_response(rid), added)

    async def _answer(self, cycle: DirectCycle, scope: Scope, received: int, added: _Added) -> None:
        target: Target = cycle.target
        dispatcher = self.dispatcher
        admitted = dispatcher.admit(scope, target.found, target.route, target.path)
        if isinstance(admitted, Response):
            await _send(cycle, admitted, added)
            return
        call = dispatcher.enter(scope, target.found, target.route, admitted)
        counted = None if call is None else _Counted(cycle.receive, call)
        finished = False
        try:
            status = 200
            try:
                # the whole body is usually there by now: taken without `receive`
                chunks = cycle.body_received()
                if chunks is None:
                    body = await read_body_from(
                        scope, cycle.receive if counted is None else counted
                    )
                else:
                    if counted is not None:
                        counted.bytes = sum(len(chunk) for chunk in chunks)
                    body = body_of(scope, chunks)
                payload, media_type, extra = await self.handlers.answer(scope, body, received)
                # the head's lines in the order the ASGI path sends them: the response's
                # own, then the request id and the server's (`with_added`)
                lines = b"content-length: %d\r\ncontent-type: %b\r\n%bx-request-id: %b\r\n%b" % (
                    len(payload),
                    media_type.encode("latin-1"),
                    header_lines(extra) if extra else b"",
                    added.rid,
                    added.lines,
                )
            except Exception as exc:
                response = failure_response(exc, scope, metrics=self.metrics)
                status, payload = response.status_code, bytes(response.body)
                lines = header_lines(with_added(response.raw_headers, added.headers()))
            if counted is not None:
                finished = True
                if dispatcher.finishes(status):  # recorded before the response is complete
                    await self.events.finish(
                        counted.call,
                        status=status,
                        bytes_in=counted.bytes,
                        bytes_out=len(payload),
                    )
            await cycle.respond_lines(status, lines, payload, check=added.rid)
        finally:
            if counted is not None and not finished:
                # failed before its response (as the ASGI path records it: a 500)
                await self.events.finish(
                    counted.call, status=500, bytes_in=counted.bytes, bytes_out=0
                )


class _Counted:
    """A `receive` that counts the request body's bytes (an audited call's `bytes_in`),
    with the call it is counted for."""

    def __init__(self, receive: Receive, call: Call) -> None:
        self.receive = receive
        self.call = call
        self.bytes = 0

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.bytes += len(message.get("body", b""))
        return message


class _Added(NamedTuple):
    """What every response to a request gets besides its own headers."""

    rid: bytes
    """The request id (`X-Request-ID`), a client's value or a new one."""
    extra: RawHeaders
    """`HttpDispatcher.extra_headers()` at the request's start."""
    lines: bytes
    """`extra` as head lines."""

    def headers(self) -> RawHeaders:
        """As `RequestContextMiddleware` adds them."""
        return [(b"x-request-id", self.rid), *self.extra]


async def _send(cycle: DirectCycle, response: Response, added: _Added) -> None:
    headers = with_added(response.raw_headers, added.headers())
    await cycle.respond(response.status_code, headers, bytes(response.body))
