"""The audit log's writer: append records to a JSON-lines file, chained (see audit_chain).

A writer that finds its file replaced by an empty one (`rotate_log`, or moved aside by hand)
continues the chain there, so a log moved aside under a running writer stays verifiable.
`prepare_log` readies a log for a writer at start: it sets a torn last line aside and
checks the whole chain."""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from shipyard.security.audit_chain import (
    CONTINUED,
    GENESIS,
    AuditHead,
    last_line,
    parse_record,
    record_hmac,
    stamp,
    verify_log,
    write_all,
)
from shipyard.security.errors import AuditError

_DETAIL_MAX = 1000


class AuditLog:
    """Appends chained records; thread-safe, and safe across processes via flock."""

    def __init__(self, path: str | Path, key: bytes, *, fsync: bool = False) -> None:
        if len(key) < 16:
            raise AuditError("audit key too short: use 32 random bytes (shipyard keys init)")
        self.path = Path(path)
        self._key = key
        self._fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = -1
        self._ino: tuple[int, int] = (0, 0)
        self._size = -1
        self._head = AuditHead(0, GENESIS)
        self._link_needed = False
        """The file is empty but the chain has a head: write `audit.continued` first."""
        with self._lock:
            self._open()
            self._sync_tail()

    def record(
        self,
        event: str,
        *,
        who: str | None = None,
        model: str | None = None,
        version: int | str | None = None,
        outcome: str = "ok",
        request_id: str | None = None,
        bytes_in: int | None = None,
        bytes_out: int | None = None,
        latency_ms: float | None = None,
        detail: str | None = None,
    ) -> dict[str, Any]:
        """Append one record and return it (with its seq and hmac)."""
        fields: dict[str, Any] = {
            "event": event,
            "who": who,
            "model": model,
            "version": version,
            "outcome": outcome,
            "request_id": request_id,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "latency_ms": round(latency_ms, 3) if latency_ms is not None else None,
            "detail": detail[:_DETAIL_MAX] if detail is not None else None,
        }
        with self._lock:
            if self._fd < 0:
                raise AuditError(f"{self.path}: audit log is closed")
            try:
                self._reopen_if_replaced()
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise AuditError(f"{self.path}: cannot append ({exc.strerror})") from exc
            try:
                self._sync_tail()
                if self._link_needed:
                    detail = f"continues the chain at seq {self._head.seq + 1}"
                    self._append({"event": CONTINUED, "outcome": "ok", "detail": detail})
                    self._link_needed = False
                body = self._append({k: v for k, v in fields.items() if v is not None})
            except OSError as exc:
                raise AuditError(f"{self.path}: cannot append ({exc.strerror})") from exc
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        return body

    def _append(self, body: dict[str, Any]) -> dict[str, Any]:
        """Write one record (under the lock and flock); a failed write leaves no partial line."""
        body.update(
            seq=self._head.seq + 1,
            at=datetime.now(UTC).isoformat(timespec="microseconds"),
            prev=self._head.hash,
        )
        body["hmac"] = record_hmac(self._key, body)
        line = (json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n").encode()
        before = os.fstat(self._fd).st_size
        try:
            write_all(self._fd, line)
            if self._fsync:
                os.fsync(self._fd)
        except OSError:
            # e.g. ENOSPC half-way through the line: cut it off so the chain stays whole
            with contextlib.suppress(OSError):
                if os.fstat(self._fd).st_size > before:
                    os.ftruncate(self._fd, before)
            self._size = -1
            raise
        self._size = before + len(line)
        self._head = AuditHead(body["seq"], body["hmac"])
        return body

    def export_head(self) -> AuditHead:
        with self._lock:
            return self._head

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        stat = os.fstat(self._fd)
        self._ino = (stat.st_dev, stat.st_ino)
        self._size = -1

    def _reopen_if_replaced(self) -> None:
        """Follow the path when the file under it was moved aside or replaced (rotation)."""
        try:
            stat = os.stat(self.path)
            same = (stat.st_dev, stat.st_ino) == self._ino
        except FileNotFoundError:
            same = False
        if not same:
            old = self._fd
            self._open()
            os.close(old)

    def _sync_tail(self) -> None:
        """Re-read the chain's head when the file changed since our last write (restart, others)."""
        size = os.fstat(self._fd).st_size
        if size == self._size:
            return
        self._link_needed = False
        line = last_line(self.path, size)
        if line is None:
            # an empty file: a new chain, or (when we know a head) the next file of ours
            self._link_needed = self._head.seq > 0
        else:
            record = parse_record(line)
            if record is None or not hmac.compare_digest(
                record_hmac(self._key, record), str(record.get("hmac"))
            ):
                raise AuditError(
                    f"{self.path}: last record is corrupt or was written with another key; "
                    f"run `shipyard audit verify {self.path}` and start a new log"
                )
            self._head = AuditHead(int(record["seq"]), str(record["hmac"]))
        self._size = size


@dataclass(frozen=True)
class Preparation:
    """What `prepare_log` did; each note becomes a record once the writer is open."""

    notes: tuple[tuple[str, str], ...] = ()
    """(event, detail) pairs: `audit.torn` (bytes set aside), `audit.new_chain`."""


def prepare_log(path: str | Path, key: bytes, *, new_chain: bool = False) -> Preparation:
    """Ready a log for a writer: set a torn tail aside, then check the whole chain.

    A last line without its newline (a crash mid-write) is moved to `NAME.torn-<UTC time>`
    and cut off. A chain that does not verify raises AuditError naming the first bad
    record, unless `new_chain`: the file is then moved to `NAME.broken-<UTC time>` and a new
    chain starts, its first record naming the problem.
    """
    path = Path(path)
    notes: list[tuple[str, str]] = []
    if not path.is_file() or path.stat().st_size == 0:
        return Preparation()
    torn = _set_aside_torn_tail(path)
    if torn is not None:
        notes.append(
            ("audit.torn", f"set aside a partial last record of {torn[1]} bytes in {torn[0].name}")
        )
    result = verify_log(path, key)
    if not result.ok:
        where = f"line {result.first_bad_line} (seq {result.first_bad_seq}): {result.problem}"
        if not new_chain:
            raise AuditError(
                f"{path}: the audit chain is broken at {where}; investigate with "
                f"`shipyard audit verify {path}`, or start a new chain (--audit-new-chain)"
            )
        aside = path.with_name(f"{path.name}.broken-{stamp()}")
        os.rename(path, aside)
        notes.append(("audit.new_chain", f"previous log moved to {aside.name}, broken at {where}"))
    return Preparation(tuple(notes))


def _set_aside_torn_tail(path: Path) -> tuple[Path, int] | None:
    with path.open("r+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        size = os.fstat(fh.fileno()).st_size
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return None
        end, block, cut = size, 4096, 0
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            chunk = fh.read(end - start)
            found = chunk.rfind(b"\n")
            if found >= 0:
                cut = start + found + 1
                break
            end = start
        fh.seek(cut)
        partial = fh.read()
        aside = path.with_name(f"{path.name}.torn-{stamp()}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_all(fd, partial)
            os.fsync(fd)
        finally:
            os.close(fd)
        fh.truncate(cut)
        fh.flush()
        os.fsync(fh.fileno())
        return aside, len(partial)
