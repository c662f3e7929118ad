"""Calls as the data plane sees them: the frozen context a transport passes down, the audited
call in progress, and the events the data plane emits (which the audit writer records).

A transport authenticates a call, then hands the data plane a `CallContext` (who, request
id, protocol, client). Audited calls become one `CallEvent` each: a transport that knows more
than the data plane (HTTP: the status it answered, bytes in and out) opens a `Call` with
`DataPlane.open_call`, passes it down and closes it; otherwise `DataPlane.infer` given a
context opens and closes its own. Load, unload and reload of models reach listeners as
`ModelChange`s naming the call that caused them (None: the server itself).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from shipyard.serving.manager import ModelEvent

ANONYMOUS = "anonymous"
"""Who a call is from when the server runs without auth (or the call needs no token)."""
SERVER = "server"
"""Who the server's own actions (startup loads, hot reload, shutdown) are from."""


@dataclass(frozen=True)
class CallContext:
    """Who makes a call and how: what a transport knows once it has authenticated it."""

    principal: str = ANONYMOUS
    """The token's name, or ANONYMOUS."""
    request_id: str | None = None
    protocol: str = "internal"
    """"v2_http", "tfserving_http", "openai_http", "v2_grpc", ..."""
    client: str | None = None
    """The caller's address, `host:port`, where the transport knows it."""
    route: str | None = None
    """HTTP: the method and path ("POST /v2/models/m/infer"); None for other transports."""


class Call:
    """One audited call in progress; the data plane notes the version that served it."""

    __slots__ = ("action", "context", "model", "started_ns", "version")

    def __init__(
        self, context: CallContext, *, action: str, model: str | None, version: str | None
    ) -> None:
        self.context = context
        self.action = action
        self.model = model
        self.version = version
        """The version that served it; the requested one (or None) when it failed earlier."""
        self.started_ns = time.perf_counter_ns()


@dataclass(frozen=True)
class CallEvent:
    """One finished audited call (never its data)."""

    action: str
    """The audit event: "infer" or "admin"."""
    context: CallContext
    model: str | None
    version: str | None
    outcome: str
    """The data plane's outcome ("success", "invalid", "overloaded", "not_ready", "error")."""
    latency_ms: float
    status: int | None = None
    """The HTTP status the transport answered with, when it closed the call itself."""
    bytes_in: int | None = None
    bytes_out: int | None = None


@dataclass(frozen=True)
class ModelChange:
    """A model version loaded, reloaded or unloaded, and the call that asked for it."""

    event: ModelEvent
    cause: CallContext | None
    """None: the server itself (startup, hot reload, shutdown)."""


Event = CallEvent | ModelChange
Listener = Callable[[Event], None]
