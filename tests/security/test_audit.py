"""Audit log: every kind of tampering is found at the right record; the chain survives restarts."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from shipyard.security.audit import AuditHead, AuditLog, verify_log
from shipyard.security.errors import AuditError

KEY = b"k" * 32


def _write(path: Path, count: int) -> AuditHead:
    with AuditLog(path, KEY) as log:
        for i in range(count):
            log.record(
                "infer",
                who="ci-bot",
                model="iris",
                version=1,
                request_id=f"r{i}",
                bytes_in=100 + i,
                bytes_out=12,
                latency_ms=1.2345678,
            )
        return log.export_head()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    _write(path, 5)
    return path


def test_intact_log_verifies(log_path: Path) -> None:
    result = verify_log(log_path, KEY)
    assert result.ok and result.records == 5 and result.head.seq == 5
    assert result.first_bad_seq is None and result.problem is None
    assert '"payload"' not in log_path.read_text()


@pytest.mark.parametrize(
    ("tamper", "bad_seq", "bad_line", "problem"),
    [
        ("edit", 3, 3, "edited or forged"),
        ("remove", 4, 3, "removed, inserted or reordered"),
        ("insert_forged", 99, 3, "edited or forged"),
        ("insert_replayed", 2, 3, "removed, inserted or reordered"),
        ("reorder", 4, 3, "removed, inserted or reordered"),
        ("remove_first", 2, 1, "removed, inserted or reordered"),
        ("garbage", None, 2, "not a complete audit record"),
    ],
)
def test_tampering_is_reported_at_the_first_bad_record(
    log_path: Path, tamper: str, bad_seq: int | None, bad_line: int, problem: str
) -> None:
    lines = _lines(log_path)
    if tamper == "edit":
        lines[2] = lines[2].replace('"outcome":"ok"', '"outcome":"denied"')
    elif tamper == "remove":
        del lines[2]
    elif tamper == "insert_forged":
        lines.insert(2, lines[1].replace('"seq":2', '"seq":99'))
    elif tamper == "insert_replayed":
        lines.insert(2, lines[1])
    elif tamper == "reorder":
        lines[2], lines[3] = lines[3], lines[2]
    elif tamper == "remove_first":
        del lines[0]
    elif tamper == "garbage":
        lines.insert(1, "not json\n")
    log_path.write_text("".join(lines))
    result = verify_log(log_path, KEY)
    assert not result.ok
    assert (result.first_bad_seq, result.first_bad_line) == (bad_seq, bad_line)
    assert result.problem is not None and problem in result.problem


def test_wrong_key_fails_at_the_first_record(log_path: Path) -> None:
    result = verify_log(log_path, b"x" * 32)
    assert (result.ok, result.first_bad_line) == (False, 1)
    assert result.problem is not None and "audit key is wrong" in result.problem


def test_restart_continues_the_chain(log_path: Path) -> None:
    with AuditLog(log_path, KEY) as log:
        assert log.export_head().seq == 5
        record = log.record("load", who="admin", model="iris", version=2)
    assert record["seq"] == 6
    result = verify_log(log_path, KEY)
    assert result.ok and result.records == 6


def test_concurrent_writers_keep_one_valid_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    logs = [AuditLog(path, KEY), AuditLog(path, KEY)]  # two handles, like two processes

    def work(n: int) -> None:
        for i in range(25):
            logs[n % 2].record("infer", who=f"t{n}", request_id=f"{n}-{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        log.close()
    result = verify_log(path, KEY)
    assert result.ok, result.problem
    assert result.records == 200 and result.head.seq == 200


def test_truncated_tail_is_detected_against_a_saved_head(log_path: Path) -> None:
    head = AuditHead.from_dict(verify_log(log_path, KEY).head.to_dict())
    assert verify_log(log_path, KEY, head=head).ok
    lines = _lines(log_path)
    log_path.write_text("".join(lines[:-2]))
    assert verify_log(log_path, KEY).ok  # a plain walk cannot tell ...
    result = verify_log(log_path, KEY, head=head)  # ... the saved head can
    assert not result.ok and result.first_bad_seq == 4
    assert result.problem is not None and "cut off the end" in result.problem
    # Rewriting history from the head's seq onwards is caught too.
    log_path.write_text("".join(lines[:-1]))
    _write(log_path, 1)
    result = verify_log(log_path, KEY, head=head)
    assert (result.ok, result.first_bad_seq) == (False, 5)


def test_corrupt_tail_refuses_to_extend(log_path: Path) -> None:
    with log_path.open("a") as fh:
        fh.write('{"seq": 6')
    with pytest.raises(AuditError, match="partial record"):
        AuditLog(log_path, KEY)
    lines = _lines(log_path)[:-1]
    lines[-1] = lines[-1].replace('"who":"ci-bot"', '"who":"mallory"')
    log_path.write_text("".join(lines))
    with pytest.raises(AuditError, match="last record is corrupt"):
        AuditLog(log_path, KEY)
