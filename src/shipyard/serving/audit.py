"""The server's audit trail: security-relevant events into the chained, HMAC-signed audit log.

One record per event, never a payload (`shipyard.security.audit_chain` describes the chain):

    auth.denied                   a 401 or 403: who (token name or "anonymous"), the route
                                  and the client address in `detail`
    infer                         every inference call: who, model, version served, outcome,
                                  request id, bytes in and out (HTTP), latency
    admin                         repository index, load and unload calls: who, outcome
    model.load / .reload / .unload  the manager's state changes, with who asked (a token name,
                                  "anonymous", or "server" for startup and hot reload)
    server.start / server.stop

`AuditLog.record` blocks (a write under flock), so records go through a bounded queue to one
writer thread; `close()` drains the queue before closing the file, so a clean shutdown loses
nothing, and the chain continues across restarts. A full queue (the disk stalled) makes
callers wait up to `put_timeout_s`, then the record is dropped and logged as an error.

The log fails closed: when a write fails (ENOSPC, EIO, ...) the writer keeps that record and
retries it every `retry_s`, the records behind it wait in order, and `problem` says why;
meanwhile audited HTTP calls (infer, admin) answer 503 without being served, and readiness is
false with the reason. The first write that succeeds clears it. At start the torn tail of a
crash is set aside and the whole chain checked (`shipyard.security.audit.prepare_log`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipyard.security.audit import AuditLog, Preparation, prepare_log
from shipyard.security.errors import AuditError, KeyFileError
from shipyard.security.keys import kek_from_env, load_audit_key, read_secret
from shipyard.serving.dataplane import DataPlane, InferenceEvent
from shipyard.serving.logs import request_id
from shipyard.serving.manager import ModelEvent
from shipyard.serving.metrics import Metrics
from shipyard.serving.settings import ServerSettings

log = logging.getLogger("shipyard.serving.audit")

ANONYMOUS = "anonymous"
SERVER = "server"
_OUTCOMES = {
    400: "invalid",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    413: "too_large",
    503: "unavailable",
}
# The data plane's metric outcomes, in the audit log's words (as for HTTP statuses).
_PLANE_OUTCOMES = {"success": "ok", "overloaded": "unavailable", "not_ready": "unavailable"}


@dataclass
class CallInfo:
    """What is known about the request being handled; lives in `current_call`."""

    who: str = ANONYMOUS
    version: str | None = None
    """The model version that served the call (set when the data plane reports it)."""
    tracked: bool = False
    """True when an HTTP middleware writes this call's record itself (with byte counts)."""
    denied: bool = False
    """True once the call was refused (401/403) and that was audited."""
    client: str | None = None
    """The caller's address, `host:port`, where the transport knows it (set by gRPC's gate)."""


current_call: ContextVar[CallInfo | None] = ContextVar("shipyard_call", default=None)


def caller() -> CallInfo:
    """The current call's info, created (as anonymous) when the transport set none."""
    call = current_call.get()
    if call is None:
        call = CallInfo()
        current_call.set(call)
    return call


class AuditWriter:
    """Queues audit records and appends them to an `AuditLog` from one background thread."""

    def __init__(
        self,
        path: str | Path,
        key: bytes,
        *,
        queue_size: int = 10_000,
        put_timeout_s: float = 5.0,
        new_chain: bool = False,
        retry_s: float = 0.5,
        close_timeout_s: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self._key = key
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(queue_size)
        self._put_timeout_s = put_timeout_s
        self._new_chain = new_chain
        self._retry_s = retry_s
        self._close_timeout_s = close_timeout_s
        self._log: AuditLog | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._gave_up = False
        self._problem: str | None = None
        self._metrics: Metrics | None = None
        self._prepared: Preparation | None = None
        self.dropped = 0
        """Records given up on because the queue stayed full."""
        self.failed = 0
        """Records not written: a bug, or still failing when the server stopped."""
        self.write_failures = 0
        """Failed attempts to append (each retry of a pending record counts)."""

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> AuditWriter | None:
        """The writer for settings.audit_log (None when unset); checks the key up front."""
        if settings.audit_log is None:
            return None
        try:
            key = load_audit_key(settings.audit_key_file)
        except KeyFileError as exc:
            if settings.audit_key_file is not None:
                raise
            raise KeyFileError(
                "the audit log needs its key: pass --audit-key-file FILE or set "
                "SHIPYARD_AUDIT_KEY (create one with `shipyard keys init`)"
            ) from exc
        kek = read_secret(settings.key_file) if settings.key_file else kek_from_env()
        if kek is not None and kek == key:
            raise KeyFileError(
                "the audit key is the key-encryption key; use a separate audit key "
                "(`shipyard keys init` writes audit.key)"
            )
        writer = cls(settings.audit_log, key, new_chain=settings.audit_new_chain)
        writer.prepare()  # a broken chain stops the server here, before it serves anything
        return writer

    def prepare(self) -> None:
        """Set a torn tail aside and check the whole chain (once; `start` does it otherwise)."""
        if self._prepared is None:
            self._prepared = prepare_log(self.path, self._key, new_chain=self._new_chain)

    @property
    def problem(self) -> str | None:
        """Why audited calls are refused now (the log cannot be written); None when healthy."""
        return self._problem

    def attach(self, dataplane: DataPlane) -> None:
        """Report health to the server: readiness false with `problem`, and the metrics
        shipyard_audit_healthy, shipyard_audit_write_failures_total, ..._pending_records."""
        if self._metrics is dataplane.metrics:
            return
        self._metrics = dataplane.metrics
        dataplane.readiness_checks.append(lambda: self._problem)
        dataplane.metrics.audit_healthy.set_function(lambda: 0.0 if self._problem else 1.0)
        dataplane.metrics.audit_pending.set_function(lambda: float(self._queue.qsize()))

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Open the log (continuing its chain) and start the writer thread."""
        if self._thread is not None:
            return
        # a torn tail is set aside and the whole chain checked; a broken one stops the start
        self.prepare()
        assert self._prepared is not None
        notes, self._prepared = self._prepared.notes, Preparation()
        self._log = AuditLog(self.path, self._key)
        for event, detail in notes:
            log.warning("audit log %s: %s", self.path, detail)
            self.submit(event, who=SERVER, outcome="repaired", detail=detail)
        self._closing.clear()
        self._thread = threading.Thread(target=self._run, name="shipyard-audit", daemon=True)
        self._thread.start()

    def submit(self, event: str, **fields: Any) -> None:
        """Queue one record (`AuditLog.record` fields); returns at once unless the queue is full."""
        item = {"event": event, **fields}
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if self._problem is not None:  # the writer is stuck: waiting would only stall
                self.dropped += 1
                log.error("audit queue full while the log cannot be written: dropped %s", event)
                return
            try:
                self._queue.put(item, timeout=self._put_timeout_s)
            except queue.Full:
                self.dropped += 1
                log.error(
                    "audit queue full for %.0f s: dropped a %s record", self._put_timeout_s, event
                )

    def flush(self) -> None:
        """Wait until every queued record is written (only while running)."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Write every queued record, stop the thread and close the log."""
        thread = self._thread
        if thread is None:
            return
        self._closing.set()  # a writer retrying a failed write gives up after close_timeout_s
        self._queue.put(None)
        thread.join()
        self._thread = None
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- event sources --------------------------------------------------------------------

    def model_event(self, event: ModelEvent) -> None:
        """Manager listener: one `model.<kind>` record, naming whoever caused it."""
        call = current_call.get()
        self.submit(
            f"model.{event.kind}",
            who=call.who if call is not None else SERVER,
            model=event.model,
            version=event.version,
            outcome=event.outcome,
            request_id=request_id.get() if call is not None else None,
            detail=event.detail or None,
        )

    def inference_event(self, event: InferenceEvent) -> None:
        """Data-plane listener: the `infer` record of calls no HTTP middleware tracks (gRPC)."""
        call = current_call.get()
        if call is not None and call.tracked:
            call.version = event.version  # the middleware writes the record, with byte counts
            return
        self.submit(
            "infer",
            who=call.who if call is not None else ANONYMOUS,
            model=event.model,
            version=event.version,
            outcome=_PLANE_OUTCOMES.get(event.outcome, event.outcome),
            request_id=request_id.get(),
            latency_ms=event.latency_ms,
            detail=_with_client(event.protocol, call),
        )

    def denied(
        self,
        *,
        who: str,
        status: int,
        model: str | None,
        route: str,
        client: str | None,
        reason: str,
    ) -> None:
        """One `auth.denied` record for a 401 or 403."""
        self.submit(
            "auth.denied",
            who=who,
            model=model or None,
            outcome=outcome_of(status),
            request_id=request_id.get(),
            detail=f"{route} from {client or 'unknown'}: {reason}",
        )

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(item)
            finally:
                self._queue.task_done()

    def _write(self, item: dict[str, Any]) -> None:
        """Append one record, retrying while the log cannot be written (order is kept)."""
        assert self._log is not None
        event = item.pop("event")
        deadline: float | None = None
        while True:
            try:
                self._log.record(event, **item)
            except AuditError as exc:
                self._failing(exc)
                if self._closing.is_set():
                    deadline = deadline or time.monotonic() + self._close_timeout_s
                    if self._gave_up or time.monotonic() >= deadline:
                        self._gave_up = True
                        self.failed += 1
                        log.error("stopping with the audit log unwritable: lost a %s record", event)
                        return
                    time.sleep(self._retry_s)
                else:
                    self._closing.wait(self._retry_s)
                continue
            except Exception:  # a bad record (a bug): keep writing the others
                self.failed += 1
                log.exception("could not append to the audit log %s", self.path)
                return
            if self._problem is not None:
                log.warning("audit log %s can be written again; audited calls resume", self.path)
                self._problem = None
            return

    def _failing(self, exc: AuditError) -> None:
        self.write_failures += 1
        if self._metrics is not None:
            self._metrics.audit_write_failures.inc()
        problem = (
            f"audit log cannot be written: {exc}; the server refuses audited calls until it can"
        )
        if problem != self._problem:
            log.error("%s", problem)
        self._problem = problem


def outcome_of(status: int) -> str:
    """The audit outcome of an HTTP status."""
    if status < 400:
        return "ok"
    return _OUTCOMES.get(status, "invalid" if status < 500 else "error")


Describe = Callable[[str], tuple[str | None, str | None]]
"""path -> (action, model) of a route; action None for open routes."""


class AuditMiddleware:
    """Tracks each HTTP call in `current_call`; writes `infer` and `admin` call records.

    Sits outside the auth middleware (which fills in who) and inside the request-id one.
    """

    def __init__(self, app: ASGIApp, *, writer: AuditWriter, describe: Describe) -> None:
        self.app = app
        self.writer = writer
        self.describe = describe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        action, model = self.describe(scope["path"])
        problem = self.writer.problem
        if problem is not None and (
            action in ("infer", "admin") or scope["path"] == "/v2/health/ready"
        ):
            # fail closed: an audited call the log cannot record is not served at all
            body: dict[str, Any] = {"error": problem}
            if scope["path"] == "/v2/health/ready":
                body = {"ready": False, "error": problem}
            refusal = JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
            await refusal(scope, receive, send)
            return
        call = CallInfo(tracked=action in ("infer", "admin"))
        token = current_call.set(call)
        if not call.tracked:
            try:
                await self.app(scope, receive, send)
            finally:
                current_call.reset(token)
            return
        started = time.perf_counter()
        status, bytes_in, bytes_out = 500, 0, 0

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
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            current_call.reset(token)
            if not call.denied:
                self.writer.submit(
                    str(action),
                    who=call.who,
                    model=model or None,
                    version=call.version,
                    outcome=outcome_of(status),
                    request_id=request_id.get(),
                    bytes_in=bytes_in,
                    bytes_out=bytes_out,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    detail=f"{scope['method']} {scope['path']}",
                )


def _with_client(detail: str, call: CallInfo | None) -> str:
    """`v2_grpc from 127.0.0.1:5000`: a gRPC record's detail names the caller like HTTP's."""
    client = call.client if call is not None else None
    return f"{detail} from {client}" if client else detail
