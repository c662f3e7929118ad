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
    audit.unwritable              stands in for a record that killed the writer three times

No record is ever dropped. `AuditLog.record` blocks (a write under flock), so records wait in
an ordered in-memory backlog (`audit_backlog`) for one writer thread. An audited call queues
its record before its response is sent, and when `queue_size` records already wait it waits
for room first, on the event loop without blocking it (`wait_for_room`): a stalled disk slows
audited calls down to the disk's pace, everything else keeps being served.

The log fails closed. When a write fails (ENOSPC, EIO, EACCES, ...) the writer keeps that
record and the ones behind it, in order, and retries with back-off (`retry_s` doubling up to
`retry_max_s`); when the writer thread dies (a bug), it is restarted with back-off
(`restart_s` doubling up to 30 s) and carries on with the record it died on. Meanwhile
`problem` says why: audited calls (infer, admin) answer 503 before they act, so nothing happens
unaudited, and readiness is false with the reason; liveness stays true. The first write that
succeeds clears it, and the backlog follows in order, so the chain stays whole. The failure
is logged once and the recovery once, not per record. A record that kills the writer three
times in a row (a bug in that record) is replaced by an `audit.unwritable` record naming it,
so the chain says what is missing instead of the log wedging for ever.

`close()` (at shutdown, bounded by the drain timeout) writes the whole backlog; records it
could not write by then are counted in `unwritten` and named in one error line. At start the
torn tail of a crash is set aside and the whole chain checked (`audit_log.prepare_log`).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from shipyard.security.audit_log import AuditLog, Preparation, prepare_log
from shipyard.security.errors import AuditError, KeyFileError
from shipyard.security.keys import kek_from_env, load_audit_key, read_secret
from shipyard.serving.audit_backlog import AuditBacklog, Record
from shipyard.serving.audit_records import call_fields, outcome_of, unwritable
from shipyard.serving.calls import SERVER, Event, ModelChange
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.logs import request_id
from shipyard.serving.metrics import Metrics
from shipyard.serving.settings import ServerSettings

log = logging.getLogger("shipyard.serving.audit_trail")

__all__ = ["AuditWriter", "outcome_of"]

_RESTART_MAX_S = 30.0
_POISON_DEATHS = 3
"""Deaths in a row on one record after which it is replaced by an `audit.unwritable` one."""


class AuditWriter:
    """Queues audit records and appends them to an `AuditLog` from one background thread."""

    def __init__(
        self,
        path: str | Path,
        key: bytes,
        *,
        queue_size: int = 10_000,
        new_chain: bool = False,
        retry_s: float = 0.05,
        retry_max_s: float = 2.0,
        restart_s: float = 1.0,
        close_timeout_s: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self._key = key
        self._backlog = AuditBacklog(queue_size)
        self._new_chain = new_chain
        self._retry_s, self._retry_max_s = retry_s, retry_max_s
        self._restart_s = restart_s
        self._close_timeout_s = close_timeout_s
        self._log: AuditLog | None = None
        self._thread: threading.Thread | None = None
        self._state = threading.Lock()
        """Guards starting a writer thread (a restart timer and close may race)."""
        self._closing = threading.Event()
        self._nudge = threading.Event()
        """Cuts a retry's back-off short (close wants the last attempts made now)."""
        self._deadline = float("inf")
        self._problem: str | None = None
        self._failing_since = 0.0
        self._deaths = 0
        """Writer deaths since the last successful write (the restart back-off)."""
        self._strikes = 0
        """Deaths on the record now first in the backlog."""
        self._metrics: Metrics | None = None
        self._prepared: Preparation | None = None
        self.write_failures = 0
        """Failed attempts to append (each retry of a pending record counts)."""
        self.restarts = 0
        """Writer threads started again after one died."""
        self.unwritten = 0
        """Records still in the backlog when `close()` gave up (the log stayed unwritable)."""

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
        writer = cls(
            settings.audit_log,
            key,
            new_chain=settings.audit_new_chain,
            queue_size=settings.audit_queue_size,
            close_timeout_s=settings.drain_timeout_s,
        )
        writer.prepare()  # a broken chain stops the server here, before it serves anything
        return writer

    def prepare(self) -> None:
        """Set a torn tail aside and check the whole chain (once; `start` does it otherwise)."""
        if self._prepared is None:
            self._prepared = prepare_log(self.path, self._key, new_chain=self._new_chain)

    @property
    def problem(self) -> str | None:
        """Why audited calls are refused now (the log cannot be written); None when healthy."""
        thread = self._thread
        if (
            self._problem is None
            and thread is not None
            and not thread.is_alive()
            and not self._closing.is_set()
        ):  # a death that bypassed _run's handler (none known): refuse, say so, restart
            self._died(RuntimeError("the writer thread stopped unexpectedly"))
        return self._problem

    def refusal(self) -> str | None:
        """The one-line answer to an audited call refused now, or None."""
        problem = self.problem
        return None if problem is None else f"{problem}; the call was not run"

    def readiness(self) -> str | None:
        """The readiness check: why the server must not take traffic, or None."""
        problem = self.problem
        return None if problem is None else f"{problem}; audited calls are refused until it can"

    @property
    def pending(self) -> int:
        """Records queued and not yet written."""
        return len(self._backlog)

    @property
    def waits(self) -> int:
        """Audited calls that waited for room in the backlog."""
        return self._backlog.waits

    def attach(self, dataplane: DataPlane) -> None:
        """Report health to the server: readiness false with the problem, and the metrics
        shipyard_audit_healthy, ..._write_failures_total, ..._pending_records,
        ..._writer_restarts_total and ..._backpressure_waits_total."""
        if self._metrics is dataplane.metrics:
            return
        self._metrics = metrics = dataplane.metrics
        dataplane.readiness_checks.append(self.readiness)
        metrics.gauge_function(metrics.audit_healthy, lambda: 0.0 if self.problem else 1.0)
        metrics.gauge_function(metrics.audit_pending, lambda: float(len(self._backlog)))
        self._backlog.on_wait = metrics.audit_waits.inc

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
        self._spawn()

    def submit(self, event: str, **fields: Any) -> None:
        """Queue one record (`AuditLog.record` fields); never blocks and never drops it."""
        self._backlog.put({"event": event, **fields})

    async def wait_for_room(self) -> None:
        """Backpressure for audited calls: wait, off the loop's back, until the backlog has
        room (at once while the log cannot be written: new calls are refused instead)."""
        await self._backlog.wait_for_room()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued record is written (only while running); False on timeout."""
        if self._thread is None:
            return not len(self._backlog)
        return self._backlog.wait_empty(timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        """Write every queued record, stop the thread and close the log; a log that stays
        unwritable (or a write that stays blocked) is given up on after `timeout_s`
        (default: the drain timeout), with one error line naming how many records were lost."""
        if self._thread is None:
            return
        wait_s = self._close_timeout_s if timeout_s is None else timeout_s
        self._deadline = time.monotonic() + wait_s
        self._closing.set()
        self._nudge.set()
        self._backlog.bounded = False  # nobody waits for room any more
        self._backlog.stop()
        with self._state:
            thread = self._thread
            if thread is not None and not thread.is_alive():  # died: one last writer drains
                thread = self._spawn_locked()
        assert thread is not None
        thread.join(wait_s + 1.0)
        left = len(self._backlog)
        if thread.is_alive():  # a slow or hung disk: leave it writing, never close under it
            self.unwritten = left
            log.error(
                "stopping with %d audit records unwritten: the writer is still writing to %s "
                "after %.1f s (a slow or blocked disk)",
                left,
                self.path,
                wait_s,
            )
            return
        if left:
            self.unwritten = left
            log.error(
                "stopping with %d audit records unwritten after %.1f s: %s",
                left,
                wait_s,
                self._problem or "writing them took longer than the drain timeout",
            )
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
        self.submit(event.action, **call_fields(event))

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

    # -- the writer thread --------------------------------------------------------------

    def _spawn(self) -> threading.Thread:
        with self._state:
            return self._spawn_locked()

    def _spawn_locked(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="shipyard-audit", daemon=True)
        self._thread = thread
        thread.start()
        return thread

    def _run(self) -> None:
        try:
            while (item := self._backlog.head()) is not None:
                if not self._write(item):
                    return  # closing, and the log stayed unwritable past the deadline
                self._backlog.pop()
        except BaseException as exc:
            self._died(exc)

    def _write(self, item: Record) -> bool:
        """Append one record, retrying with back-off while the log cannot be written."""
        assert self._log is not None
        fields = dict(item)
        event = fields.pop("event")
        delay = self._retry_s
        while True:
            try:
                self._log.record(event, **fields)
            except AuditError as exc:
                self._failing(exc)
                left = self._deadline - time.monotonic()
                if self._closing.is_set() and left <= 0:
                    return False
                if self._nudge.wait(min(delay, left)):
                    self._nudge.clear()  # one prompt retry for close(), then the back-off
                delay = min(delay * 2, self._retry_max_s)
                continue
            self._deaths = self._strikes = 0
            if self._problem is not None:
                self._recovered()
            return True

    def _failing(self, exc: AuditError) -> None:
        self.write_failures += 1
        if self._metrics is not None:
            self._metrics.audit_write_failures.inc()
        self._set_problem(str(exc))

    def _died(self, exc: BaseException) -> None:
        """The writer thread is ending on an unexpected error: refuse audited calls, and
        start another writer after a back-off (its record stays first in the backlog)."""
        self._deaths += 1
        delay = min(self._restart_s * 2 ** (self._deaths - 1), _RESTART_MAX_S)
        cause = f"{type(exc).__name__}: {exc}"
        self._set_problem(f"its writer thread died ({cause})")
        log.error("the audit writer died (%s); restarting it in %.1f s", cause, delay, exc_info=exc)
        self._strikes += 1
        if self._strikes >= _POISON_DEATHS and (item := self._backlog.peek()) is not None:
            self._strikes = 0  # each record gets its own three tries
            self._backlog.replace_head(unwritable(item, cause))
            log.error(
                "the audit writer died %d times on one %s record", _POISON_DEATHS, item["event"]
            )
        if not self._closing.is_set():
            timer = threading.Timer(delay, self._restart)
            timer.daemon = True
            timer.start()

    def _restart(self) -> None:
        with self._state:
            thread = self._thread
            if self._closing.is_set() or (thread is not None and thread.is_alive()):
                return
            self.restarts += 1
            if self._metrics is not None:
                self._metrics.audit_restarts.inc()
            log.warning("restarting the audit writer (%d pending records)", len(self._backlog))
            self._spawn_locked()

    def _set_problem(self, cause: str) -> None:
        """Refuse audited calls from now on; logged once when the trouble starts (or changes)."""
        problem = f"audit log cannot be written: {cause}"
        if problem == self._problem:
            return
        if self._problem is None:
            self._failing_since = time.monotonic()
        self._problem = problem
        self._backlog.bounded = False  # running calls must not hang on a log that may stay down
        log.error(
            "%s; audited calls answer 503 until it can (%d records wait in memory)",
            problem,
            len(self._backlog),
        )

    def _recovered(self) -> None:
        self._problem = None
        if not self._closing.is_set():
            self._backlog.bounded = True
        log.warning(
            "audit log %s can be written again after %.1f s; writing the %d records that "
            "waited, in order; audited calls resume",
            self.path,
            time.monotonic() - self._failing_since,
            len(self._backlog),
        )
