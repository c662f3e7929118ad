"""Append-only JSON-lines audit log whose records are chained with HMAC-SHA256.

Each line is one record: `seq`, `at`, `event`, `who`, `model`, `version`, `outcome`,
`request_id`, sizes and latency (never payloads), `prev` (the previous record's `hmac`, or
64 zeros for the first) and `hmac` = HMAC-SHA256(audit key, canonical JSON of all the other
fields). Editing, removing, inserting or reordering a record breaks the chain at that record;
cutting records off the end is caught by verifying against a head saved earlier
(`export_head()`). The audit key must differ from the key-encryption key.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from shipyard.security.errors import AuditError

GENESIS = "0" * 64
_REQUIRED = ("seq", "at", "event", "outcome", "prev", "hmac")
_DETAIL_MAX = 200


@dataclass(frozen=True)
class AuditHead:
    """The last record's sequence number and hmac; save it to detect a truncated tail."""

    seq: int
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash}

    @classmethod
    def from_dict(cls, data: Any) -> AuditHead:
        try:
            return cls(seq=int(data["seq"]), hash=str(data["hash"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise AuditError(f"not an audit head (expected {{seq, hash}}): {exc}") from exc


@dataclass(frozen=True)
class AuditVerification:
    """Outcome of `verify_log`: ok, or the first bad record and what is wrong with it."""

    ok: bool
    records: int
    head: AuditHead
    first_bad_seq: int | None = None
    first_bad_line: int | None = None
    problem: str | None = None


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
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = -1
        self._head = AuditHead(0, GENESIS)
        with self._lock:
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
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._sync_tail()
                body = {k: v for k, v in fields.items() if v is not None}
                body.update(
                    seq=self._head.seq + 1,
                    at=datetime.now(UTC).isoformat(timespec="microseconds"),
                    prev=self._head.hash,
                )
                body["hmac"] = record_hmac(self._key, body)
                line = (json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n").encode()
                _write_all(self._fd, line)
                if self._fsync:
                    os.fsync(self._fd)
                self._size += len(line)
                self._head = AuditHead(body["seq"], body["hmac"])
            except OSError as exc:
                raise AuditError(f"{self.path}: cannot append ({exc.strerror})") from exc
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
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

    def _sync_tail(self) -> None:
        """Re-read the chain's head when the file changed since our last write (restart, others)."""
        size = os.fstat(self._fd).st_size
        if size == self._size:
            return
        line = _last_line(self.path, size)
        if line is None:
            self._head = AuditHead(0, GENESIS)
        else:
            record = _parse(line)
            if record is None or not hmac.compare_digest(
                record_hmac(self._key, record), str(record.get("hmac"))
            ):
                raise AuditError(
                    f"{self.path}: last record is corrupt or was written with another key; "
                    f"run `shipyard audit verify {self.path}` and start a new log"
                )
            self._head = AuditHead(int(record["seq"]), str(record["hmac"]))
        self._size = size


def record_hmac(key: bytes, record: dict[str, Any]) -> str:
    """HMAC-SHA256 over the canonical JSON of every field except `hmac`."""
    body = {k: v for k, v in record.items() if k != "hmac"}
    canonical = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hmac.new(key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def verify_log(path: str | Path, key: bytes, *, head: AuditHead | None = None) -> AuditVerification:
    """Walk the chain; report the first record that was edited, removed, inserted or reordered."""
    path = Path(path)
    expected_seq, prev = 1, GENESIS
    last = AuditHead(0, GENESIS)
    count = 0
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise AuditError(f"{path}: cannot read audit log ({exc.strerror})") from exc
    with fh:
        for number, raw in enumerate(fh, start=1):
            record = _parse(raw.rstrip(b"\n")) if raw.endswith(b"\n") else None
            seq = _seq_of(record)
            problem = _check(key, record, expected_seq, prev)
            if (
                problem is None
                and head is not None
                and seq == head.seq
                and not hmac.compare_digest(str(record["hmac"] if record else ""), head.hash)
            ):
                problem = "differs from the saved head (the log was rewritten)"
            if problem is not None:
                return AuditVerification(False, count, last, seq, number, problem)
            assert record is not None
            count += 1
            prev = str(record["hmac"])
            last = AuditHead(expected_seq, prev)
            expected_seq += 1
    if head is not None and last.seq < head.seq:
        return AuditVerification(
            False,
            count,
            last,
            last.seq + 1,
            count + 1,
            f"log ends at seq {last.seq} but the saved head is seq {head.seq}: "
            "records were cut off the end",
        )
    return AuditVerification(True, count, last)


def _check(key: bytes, record: dict[str, Any] | None, expected_seq: int, prev: str) -> str | None:
    if record is None or any(k not in record for k in _REQUIRED):
        return "not a complete audit record (damaged or partially written line)"
    try:
        mac = record_hmac(key, record)
    except ValueError:
        return "not a valid audit record"
    if not hmac.compare_digest(mac, str(record["hmac"])):
        return "hmac does not match: the record was edited or forged (or the audit key is wrong)"
    if record["seq"] != expected_seq:
        return (
            f"sequence number {record['seq']}, expected {expected_seq}: "
            "records were removed, inserted or reordered"
        )
    if record["prev"] != prev:
        return "does not chain to the previous record: records were removed or reordered"
    return None


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _seq_of(record: dict[str, Any] | None) -> int | None:
    seq = record.get("seq") if record else None
    return seq if isinstance(seq, int) else None


def _last_line(path: Path, size: int) -> bytes | None:
    """The last complete line of the first `size` bytes; AuditError if it is unterminated."""
    if size == 0:
        return None
    with path.open("rb") as fh:
        fh.seek(size - 1)
        if fh.read(1) != b"\n":
            raise AuditError(
                f"{path}: ends with a partial record (interrupted write); "
                f"run `shipyard audit verify {path}` and start a new log"
            )
        block, data = 4096, b""
        end = size - 1
        while True:
            start = max(0, end - block)
            fh.seek(start)
            data = fh.read(end - start) + data
            cut = data.rfind(b"\n")
            if cut >= 0 or start == 0:
                return data[cut + 1 :]
            end = start
            block *= 2


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
