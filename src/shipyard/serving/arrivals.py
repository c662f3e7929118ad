"""Whether a request can still arrive to join a waiting batch: `Arrivals.settled`.

A batch waits up to `max_queue_delay_us` for requests to join it. When every HTTP/1.1
connection of this process has a request under way and each of those requests is already
waiting in the batcher, no request can arrive to join it (an HTTP/1.1 client sends its next
request on a connection only after the answer to the last one), so the wait only adds
latency: the batch runs at once. A closed loop of N keep-alive clients (a client pool, a
load balancer's connections, a benchmark) then batches all N without waiting out the delay,
and a lone sequential client never waits at all. Under open-loop traffic some connection is
nearly always idle, and the delay applies as before.

The rule never holds, so batching behaves exactly as configured, when:
- no HTTP connection is open (requests from an in-process client, a Ray replica's queue);
- a connection opened within the batch's queue delay (a client opening its pool lazily
  sends its first request on it right after: it may be about to arrive);
- a gRPC inference call began within `GRPC_QUIET_NS` (a gRPC channel multiplexes calls on
  one connection, so its next call can come at any time);
- the server speaks HTTP through h11 (no httptools): its connections are not counted.

The guarded httptools protocol (`http.guard`) counts connections and the requests under
way on them; the gRPC servicer notes its inference calls. One `Arrivals` per server (the
model manager's), read and written on the serving loop only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

GRPC_QUIET_NS = 1_000_000_000
"""After a gRPC inference call began, this long before a batch may run early again."""


class Arrivals:
    """This process's HTTP connections and requests under way, and its latest gRPC call."""

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._now = clock
        """Monotonic nanoseconds (a test passes its own)."""
        self.open = 0
        """HTTP connections open."""
        self.busy = 0
        """HTTP connections with a request under way (headers in, answer not yet sent); the
        protocol adds and takes away one itself, per connection, on its request path. A
        count left too high only keeps batches waiting their delay, as without this."""
        self.opened_ns: int | None = None
        """When the latest HTTP connection opened (the clock's ns); None: none yet."""
        self.grpc_ns: int | None = None
        """When the latest gRPC inference call began (the clock's ns); None: none yet."""

    def connection_opened(self) -> None:
        self.open += 1
        self.opened_ns = self._now()

    def connection_closed(self, *, busy: bool) -> None:
        self.open -= 1
        if busy:
            self.busy -= 1

    def grpc_call(self) -> None:
        self.grpc_ns = self._now()

    def settled(self, queued: int, quiet_ns: int) -> bool:
        """True when no request can arrive to join a batch while `queued` requests wait in
        its batcher: every open connection has a request under way, all of them queued
        there, and neither a connection opened within `quiet_ns` nor a gRPC inference call
        began within GRPC_QUIET_NS."""
        if queued != self.busy or self.busy != self.open or not queued:
            return False
        now = self._now()
        if self.opened_ns is not None and now - self.opened_ns < quiet_ns:
            return False
        return self.grpc_ns is None or now - self.grpc_ns >= GRPC_QUIET_NS
