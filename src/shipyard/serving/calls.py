"""Calls as the data plane sees them: the frozen context a transport passes down, the audited
call in progress, and the events the data plane emits (which the audit writer records).

A transport authenticates a call, then hands the data plane a `CallContext` (who, request
id, protocol, client). Audited calls become one `CallEvent` each, emitted by the data plane's
`Events` to its listeners (the audit writer): a transport that knows more than the data
plane (HTTP: the status it answered, bytes in and out) opens a `Call` (`Events.open`),
passes it down and closes it; otherwise `DataPlane.infer` given a context opens and closes
its own. Either way the event is emitted before the call's response is sent, after waiting
for room in the listeners that cannot keep up (`Events.backpressure`: the audit backlog). Loads, unloads and reloads reach the listeners as `ModelChange`s naming the call
that caused them (None: the server itself).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shipyard.codecs.types import InferenceResponse
from shipyard.errors import ShipyardError
from shipyard.serving.errors import ClientGone, DeadlineExceeded, ModelNotReady, Overloaded
from shipyard.serving.logs import request_id
from shipyard.serving.version_state import ModelEvent

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


class Events:
    """The data plane's listeners and what it emits to them: audited calls, model changes."""

    def __init__(self) -> None:
        self.listeners: list[Listener] = []
        """Called on the event loop with every `CallEvent` and `ModelChange`."""
        self.backpressure: list[Callable[[], Awaitable[None]]] = []
        """Awaited before an audited call's event is emitted (`finish`): a listener that
        cannot keep up (the audit writer's backlog is full) makes the call wait for room,
        so its event is never dropped and the loop is never blocked."""

    def open(
        self, context: CallContext, *, action: str, model: str | None, version: str | None
    ) -> Call | None:
        """An audited call the transport will `close`; None when nobody listens."""
        if not self.listeners:
            return None
        return Call(context, action=action, model=model, version=version)

    async def finish(
        self,
        call: Call,
        *,
        outcome: str = "success",
        status: int | None = None,
        bytes_in: int | None = None,
        bytes_out: int | None = None,
    ) -> None:
        """Wait for room in every listener (`backpressure`), then `close` the call. The
        event is emitted even when the wait is cancelled: a call that ran is never lost."""
        try:
            for wait in self.backpressure:
                await wait()
        finally:
            self.close(call, outcome=outcome, status=status, bytes_in=bytes_in, bytes_out=bytes_out)

    def close(
        self,
        call: Call,
        *,
        outcome: str = "success",
        status: int | None = None,
        bytes_in: int | None = None,
        bytes_out: int | None = None,
    ) -> None:
        """Emit the call's one `CallEvent`."""
        latency_ms = (time.perf_counter_ns() - call.started_ns) / 1e6
        self._emit(
            CallEvent(
                call.action,
                call.context,
                call.model,
                call.version,
                outcome,
                latency_ms,
                status=status,
                bytes_in=bytes_in,
                bytes_out=bytes_out,
            )
        )

    async def infer(
        self,
        call: Call | CallContext | None,
        run: Callable[[], Awaitable[InferenceResponse]],
        *,
        model: str,
        version: str | None,
        protocol: str,
        started_ns: int,
    ) -> InferenceResponse:
        """`run()`, noting the version that served it on `call`; a context (None: an anonymous
        one) makes this the whole call, closed (emitted) here."""
        if isinstance(call, Call):
            tracked, own = call, False
        else:
            context = call or CallContext(request_id=request_id.get() or None, protocol=protocol)
            tracked, own = Call(context, action="infer", model=model, version=version), True
            tracked.started_ns = started_ns
        tracked.version, outcome = version, "error"
        try:
            response = await run()
            tracked.version, outcome = response.model_version, "success"
            return response
        except Exception as exc:
            outcome = outcome_of_error(exc)
            raise
        finally:
            if own:  # emitted (waiting for room if need be) before the response goes out
                await self.finish(tracked, outcome=outcome)

    def model_changed(self, event: ModelEvent) -> None:
        """The manager's listener: a `ModelChange` naming the call that caused it."""
        if self.listeners:
            self._emit(ModelChange(event, event.cause))

    def _emit(self, event: Event) -> None:
        for listener in self.listeners:
            listener(event)


def outcome_of_error(exc: BaseException) -> str:
    """A failed call's outcome, as metrics and events name it."""
    if isinstance(exc, Overloaded):
        return "overloaded"
    if isinstance(exc, ModelNotReady):
        return "not_ready"
    if isinstance(exc, DeadlineExceeded):
        return "timeout"
    if isinstance(exc, ClientGone):
        return "cancelled"
    if isinstance(exc, ShipyardError) and 400 <= exc.status < 500:
        return "invalid"
    return "error"
