"""Bounds on every HTTP connection before the app (and auth) sees it: uvicorn's httptools protocol
with header size and count limits, header and body read timeouts and a connection cap.

uvicorn's httptools protocol has none of these: httptools buffers a header line however long it
is, and a client that never finishes its headers holds its connection (and memory) for ever.
`guarded_protocol(settings)` returns a `HttpToolsProtocol` subclass that, per connection:

- counts the bytes received while the request line and headers are incomplete, and the header
  fields once parsed: past `max_header_bytes` or `max_header_fields` it answers 431 and closes;
- closes a connection whose request line and headers are not complete `header_timeout_s`
  after it opened or after its request began (408 when some bytes came, silence otherwise);
- closes a connection whose request body stalls: no body bytes for `body_timeout_s` while the
  app waits for them (408 if no response has started);
- refuses connections past `max_connections` open at once with 503 and closes them;
- puts `CLIENT_GONE` in each request's scope: true once its connection is closed;
- under `--workers`, counts its connections in the group's shares and answers a request
  with `Connection: close` while the worker holds more than its share (`http.balance`);
- counts its connections and whether a request is under way on each in the server's
  `Arrivals`, which lets a batch run before its queue delay when no request can arrive to
  join it (`serving.arrivals`).

Keep-alive idle connections are closed `timeout_keep_alive` after their last response, by
one timer per connection that is re-armed only when it fires early (uvicorn arms and
cancels one per request). Requests run through `http.cycle.ResponseCycle`, V2 inference
through `http.direct` when the server gives it (`direct`); the request
callbacks skip uvicorn's WebSocket-upgrade and concurrency-limit checks, which the server
never turns on (`ws="none"`, no `limit_concurrency`).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shipyard.serving.arrivals import Arrivals
from shipyard.serving.http.balance import ConnectionShares
from shipyard.serving.http.common import CLIENT_GONE
from shipyard.serving.http.cycle import DirectCycle, ResponseCycle
from shipyard.serving.http.direct import DirectInfer
from shipyard.serving.settings import HttpSettings

log = logging.getLogger("shipyard.serving.http.guard")


def _reply(status: bytes, message: str) -> bytes:
    body = message.encode("ascii")
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode("ascii") + b"\r\nconnection: close\r\n\r\n"
    ) + body


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing; data_received answers 431."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with the bounds of `limits` (set by `guarded_protocol`)."""

    limits: HttpSettings = HttpSettings()
    shares: ConnectionShares | None = None
    """The worker group's connection counts (`--workers`), None for a single process."""
    direct: DirectInfer | None = None
    """Answers V2 inference without the ASGI app (`http.direct`); None: the app answers all."""
    arrivals: Arrivals | None = None
    """The server's count of connections and requests under way (`serving.arrivals`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        """True while the current request's line and headers are incomplete."""
        self._head_bytes = 0
        """Bytes received while the current request's head is incomplete (raw)."""
        self._too_large = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_at = 0.0
        """Loop time body bytes last arrived."""
        self._shed = False
        """Told to close after its current request to even out the workers' connections."""
        self._idle_at: float | None = None
        """Loop time the last response completed; None while a request is under way."""
        self._idle_timer: asyncio.TimerHandle | None = None
        self._busy = False
        """A request is under way (its headers are in, its answer not yet sent)."""

    # -- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.shares is not None:
            self.shares.opened()
        if self.arrivals is not None:
            self.arrivals.connection_opened()
        if len(self.connections) > self.limits.max_connections:
            log.warning(
                "refused a connection from %s: %d open, the limit is %d (--max-connections)",
                _peer(self.client),
                len(self.connections) - 1,
                self.limits.max_connections,
            )
            self._close_with(b"503 Service Unavailable", _TOO_MANY)
            return
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self.shares is not None and not self._shed:
            self.shares.closed()
        if self.arrivals is not None:
            self.arrivals.connection_closed(busy=self._busy)
            self._busy = False
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        else:
            self._body_at = self.loop.time()
        try:
            super().data_received(data)
        except _HeadersTooLarge:
            self._refuse_head()
            return
        # Timers are armed only when a read leaves a request incomplete, so the common case
        # (a whole request in one read) costs no timer at all.
        if self._in_head:
            if self._head_bytes:
                if self._head_bytes > self.limits.max_header_bytes:
                    self._refuse_head()
                elif self._head_timer is None:
                    self._head_timer = self.loop.call_later(
                        self.limits.header_timeout_s, self._head_timeout
                    )
        elif self._body_timer is None and not self.transport.is_closing():
            self._body_at = self.loop.time()
            self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)

    def send_400_response(self, msg: str) -> None:
        # httptools turns an exception raised in a callback into HttpParserCallbackError,
        # which uvicorn answers with 400; ours is a 431.
        if self._too_large:
            raise _HeadersTooLarge
        self._cancel_timers()
        super().send_400_response(msg)

    # -- parser callbacks ---------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        limits = self.limits
        if len(self.headers) > limits.max_header_fields or (
            # the raw count includes any body bytes of the same read: measure exactly then
            self._head_bytes > limits.max_header_bytes
            and len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            > limits.max_header_bytes
        ):
            self._too_large = True
            raise _HeadersTooLarge
        self._in_head = False
        self._head_bytes = 0
        if not self._busy and self.arrivals is not None:
            self._busy = True
            self.arrivals.busy += 1
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        # uvicorn's on_headers_complete, without the upgrade and concurrency-limit checks
        parser = self.parser
        scope = self.scope
        http_version = parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        url = httptools.parse_url(self.url)
        raw_path = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = url.query or b""
        # the app's probe for a client that left (a closed connection: the dispatcher drops
        # its queued request unrun); is_closing is also true after the server closes it
        scope[CLIENT_GONE] = self.transport.is_closing  # type: ignore[literal-required]
        keep_alive = http_version != "1.0" and parser.should_keep_alive()
        shares = self.shares
        if (
            shares is not None
            and keep_alive
            and not self._shed
            and not self.pipeline  # requests queued behind this one would be cut
            and shares.over_share()
        ):
            keep_alive = False  # answered with `connection: close`, then closed
            self._shed = True
            shares.shed()
        existing = self.cycle
        parts = (
            scope,
            self.transport,
            self.flow,
            self.logger,
            self.server_state.default_headers,
            asyncio.Event(),
            self.expect_100_continue,
            keep_alive,
            self.on_response_complete,
        )
        direct = self.direct
        target = None if direct is None else direct.match(scope)  # type: ignore[arg-type]
        cycle: ResponseCycle
        if target is None:
            cycle = ResponseCycle(*parts)
        else:  # V2 inference, answered without the ASGI app (`http.direct`)
            cycle = DirectCycle(*parts, serve=direct.serve, target=target)  # type: ignore[union-attr]
        self.cycle = cycle
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, self.app)
        else:  # pipelined: queued until the one before has its response
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))

    def on_body(self, body: bytes) -> None:
        cycle: ResponseCycle = self.cycle  # type: ignore[assignment]
        if cycle.response_complete:
            return
        cycle.chunks.append(body)
        cycle.body_size += len(body)
        if cycle.body_size > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if not cycle.response_complete:
            cycle.more_body = False
            cycle.message_event.set()
        self._in_head = True
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            if self._busy:
                self._busy = False
                self.arrivals.busy -= 1  # type: ignore[union-attr]
            self._idle_at = self.loop.time()
            if self._idle_timer is None:
                self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn calls this when bytes arrive: the connection is no longer idle
        self._idle_at = None

    # -- timers -------------------------------------------------------------------------------

    def _idle_check(self) -> None:
        self._idle_timer = None
        idle_at = self._idle_at
        if idle_at is None or self.transport.is_closing():
            return  # busy: the next response arms it again
        left = idle_at + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self._idle_timer = self.loop.call_later(left, self._idle_check)
        else:
            self.transport.close()

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes:
            log.info(
                "closed a connection from %s: headers incomplete after %g s",
                _peer(self.client),
                self.limits.header_timeout_s,
            )
            self._close_with(b"408 Request Timeout", self._head_timeout_message())
        else:
            self.transport.close()  # opened, never spoke: nothing to answer

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self._in_head:
            return
        timeout = self.limits.body_timeout_s
        cycle = self.cycle
        waited = self.loop.time() - self._body_at
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            waited = 0.0  # the app is slow to read, not the client to send
            self._body_at = self.loop.time()
        if waited < timeout:
            self._body_timer = self.loop.call_later(timeout - waited, self._body_timeout)
            return
        log.info(
            "closed a connection from %s: request body stalled for %g s",
            _peer(self.client),
            timeout,
        )
        if cycle is not None and not cycle.response_started:
            self._close_with(
                b"408 Request Timeout", f'{{"error": "request body stalled for {timeout:g} s"}}'
            )
        else:
            self._close_with(b"", "")
        if cycle is not None:
            cycle.disconnected = True
            cycle.message_event.set()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._idle_timer = None

    def _refuse_head(self) -> None:
        log.info(
            "refused a request from %s: headers over %d bytes or %d fields",
            _peer(self.client),
            self.limits.max_header_bytes,
            self.limits.max_header_fields,
        )
        self._close_with(b"431 Request Header Fields Too Large", self._too_large_message())

    def _close_with(self, status: bytes, message: str) -> None:
        self._cancel_timers()
        if not self.transport.is_closing():
            if status:
                self.transport.write(_reply(status, message))
            self.transport.close()

    def _too_large_message(self) -> str:
        limits = self.limits
        return (
            f'{{"error": "request headers larger than {limits.max_header_bytes} bytes or more '
            f'than {limits.max_header_fields} fields"}}'
        )

    def _head_timeout_message(self) -> str:
        return (
            f'{{"error": "request headers not complete within {self.limits.header_timeout_s:g} s"}}'
        )


_TOO_MANY = '{"error": "too many open connections; retry later"}'


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown"


def guarded_protocol(
    limits: HttpSettings,
    shares: ConnectionShares | None = None,
    direct: DirectInfer | None = None,
    arrivals: Arrivals | None = None,
) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` enforcing `limits` (balancing
    connections through `shares` under `--workers`, answering V2 inference through
    `direct` and counting connections and requests in `arrivals` when given)."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"limits": limits, "shares": shares, "direct": direct, "arrivals": arrivals},
    )
