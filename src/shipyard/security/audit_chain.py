"""The audit chain: records chained with HMAC-SHA256, checked one file or a rotated set at a time.

Each line is one record: `seq`, `at`, `event`, `who`, `model`, `version`, `outcome`,
`request_id`, sizes and latency (never payloads), `prev` (the previous record's `hmac`, or
64 zeros for the first) and `hmac` = HMAC-SHA256(audit key, canonical JSON of all the other
fields). Editing, removing, inserting or reordering a record breaks the chain at that record;
cutting records off the end is caught by verifying against a head saved earlier
(`AuditLog.export_head()`). The audit key must differ from the key-encryption key.

A chain may span files: `rotate_log` moves the log aside and starts a new file whose first
record, `audit.continued`, carries the previous file's head (its `seq` follows on, its `prev`
is the old head's hmac); `verify_files` checks such a set, oldest first, as one chain.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shipyard.security.errors import AuditError

GENESIS = "0" * 64
CONTINUED = "audit.continued"
"""The first record of a file that continues the chain of an earlier file."""

_REQUIRED = ("seq", "at", "event", "outcome", "prev", "hmac")


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


def record_hmac(key: bytes, record: dict[str, Any]) -> str:
    """HMAC-SHA256 over the canonical JSON of every field except `hmac`."""
    body = {k: v for k, v in record.items() if k != "hmac"}
    canonical = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hmac.new(key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def verify_log(
    path: str | Path,
    key: bytes,
    *,
    head: AuditHead | None = None,
    after: AuditHead | None = None,
) -> AuditVerification:
    """Walk the chain; report the first record that was edited, removed, inserted or reordered.

    `after` is the head of the file before this one (see `verify_files`). Without it, a file
    whose first record is `audit.continued` is checked from that record on.
    """
    path = Path(path)
    start = after
    last = after or AuditHead(0, GENESIS)
    count = 0
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise AuditError(f"{path}: cannot read audit log ({exc.strerror})") from exc
    with fh:
        for number, raw in enumerate(fh, start=1):
            record = parse_record(raw.rstrip(b"\n")) if raw.endswith(b"\n") else None
            seq = _seq_of(record)
            if number == 1 and start is None:
                start = AuditHead(0, GENESIS)
                if record is not None and record.get("event") == CONTINUED and seq is not None:
                    start = AuditHead(seq - 1, str(record.get("prev")))
                last = start
            problem = _check(key, record, last.seq + 1, last.hash)
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
            last = AuditHead(last.seq + 1, str(record["hmac"]))
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


@dataclass(frozen=True)
class ChainVerification:
    """Outcome of `verify_files`: `bad_file` names the file of the first bad record."""

    ok: bool
    records: int
    head: AuditHead
    bad_file: Path | None = None
    first_bad: AuditVerification | None = None


def verify_files(
    paths: list[Path], key: bytes, *, head: AuditHead | None = None
) -> ChainVerification:
    """Verify several files, oldest first, as one chain (rotated logs, then the current one).

    The first file may start the chain or continue an earlier one; each later file must
    continue exactly where the one before it ends.
    """
    if not paths:
        raise AuditError("no audit log files given")
    after: AuditHead | None = None
    records = 0
    for index, path in enumerate(paths):
        last_file = index == len(paths) - 1
        result = verify_log(path, key, head=head if last_file else None, after=after)
        if not result.ok:
            return ChainVerification(False, records + result.records, result.head, path, result)
        records += result.records
        after = result.head
    assert after is not None
    return ChainVerification(True, records, after)


def rotate_log(path: str | Path, key: bytes) -> Path:
    """Move the log aside (to `NAME.<UTC time>`) and continue its chain in a new file at `path`.

    The old file's last record must verify. The new file's first record is
    `audit.continued` (seq and prev follow the old head), and a writer holding the old file
    follows the path on its next record. Returns where the old file went.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # writers wait until the new file is in place
        size = os.fstat(fd).st_size
        line = last_line(path, size)
        if line is None:
            raise AuditError(f"{path}: empty audit log; nothing to rotate")
        record = parse_record(line)
        if record is None or not hmac.compare_digest(
            record_hmac(key, record), str(record.get("hmac"))
        ):
            raise AuditError(
                f"{path}: last record is corrupt or was written with another key; "
                f"run `shipyard audit verify {path}`"
            )
        aside = path.with_name(f"{path.name}.{stamp()}")
        tmp = path.with_name(f".{path.name}.rotating")
        body: dict[str, Any] = {
            "event": CONTINUED,
            "outcome": "ok",
            "detail": f"continues {aside.name} after seq {record['seq']}",
            "seq": int(record["seq"]) + 1,
            "at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "prev": str(record["hmac"]),
        }
        body["hmac"] = record_hmac(key, body)
        tmp_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(
                tmp_fd, (json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n").encode()
            )
            os.fsync(tmp_fd)
        finally:
            os.close(tmp_fd)
        os.rename(path, aside)
        os.rename(tmp, path)
        return aside
    except OSError as exc:
        raise AuditError(f"{path}: cannot rotate ({exc.strerror})") from exc
    finally:
        os.close(fd)


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


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


def parse_record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _seq_of(record: dict[str, Any] | None) -> int | None:
    seq = record.get("seq") if record else None
    return seq if isinstance(seq, int) else None


def last_line(path: Path, size: int) -> bytes | None:
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


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
