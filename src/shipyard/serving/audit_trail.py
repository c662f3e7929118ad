"""The server's audit trail: security-relevant events into the chained, HMAC-signed audit log.

One record per event, never a payload (`shipyard.security.audit_chain` describes the chain). The
data plane emits the call and model events (`calls`), `record` writes them; the guard
writes `auth.denied` itself:

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
meanwhile audited calls (infer, admin) answer 503 without being served, and readiness is
false with the reason. The first write that succeeds clears it. At start the torn tail of a
crash is set aside and the whole chain checked (`shipyard.security.audit_log.prepare_log`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from shipyard.security.audit_log import AuditLog, Preparation, prepare_log
from shipyard.security.errors import AuditError, KeyFileError
from shipyard.security.keys import kek_from_env, load_audit_key, read_secret
from shipyard.serving.calls import SERVER, CallEvent, Event, ModelChange
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.logs import request_id
from shipyard.serving.metrics import Metrics
from shipyard.serving.settings import ServerSettings

log = logging.getLogger("shipyard.serving.audit_trail")

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

    # -- events -------------------------------------------------------------------------

    def record(self, event: Event) -> None:
        """Data-plane listener: one record per audited call and per model change."""
        if isinstance(event, ModelChange):
            cause, change = event.cause, event.event
            self.submit(
                f"model.{change.kind}",
                who=cause.principal if cause is not None else SERVER,
                model=change.model,
                version=change.version,
                outcome=change.outcome,
                request_id=cause.request_id if cause is not None else None,
                detail=change.detail or None,
            )
            return
        self.submit(event.action, **_call_fields(event))

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


def _call_fields(event: CallEvent) -> dict[str, Any]:
    """An audited call's record: HTTP's names its route and bytes, others their client."""
    context = event.context
    if event.status is not None:
        outcome = outcome_of(event.status)
    else:
        outcome = _PLANE_OUTCOMES.get(event.outcome, event.outcome)
    fields: dict[str, Any] = {
        "who": context.principal,
        "model": event.model,
        "version": event.version,
        "outcome": outcome,
        "request_id": context.request_id,
    }
    if event.bytes_in is not None:
        fields["bytes_in"] = event.bytes_in
        fields["bytes_out"] = event.bytes_out
    fields["latency_ms"] = event.latency_ms
    if context.route is not None:
        fields["detail"] = context.route
    elif context.client:  # `v2_grpc from 127.0.0.1:5000`: named like HTTP's callers
        fields["detail"] = f"{context.protocol} from {context.client}"
    else:
        fields["detail"] = context.protocol
    return fields
