"""Audit log: every kind of tampering is found at the right record; the chain survives restarts."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from shipyard.security.audit_chain import (
    CONTINUED,
    AuditHead,
    rotate_log,
    verify_files,
    verify_log,
)
from shipyard.security.audit_log import AuditLog, prepare_log
from shipyard.security.errors import AuditError
from shipyard.serving.audit_trail import AuditWriter

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


# -- repair, whole-chain check, rotation, failed writes -------------------------------------


def test_a_torn_tail_is_set_aside_and_noted_on_start(log_path: Path) -> None:
    with log_path.open("a") as fh:
        fh.write('{"seq": 6, "ev')  # a crash half-way through a line
    writer = AuditWriter(log_path, KEY)
    writer.start()
    writer.close()
    torn = list(log_path.parent.glob("audit.jsonl.torn-*"))
    assert len(torn) == 1 and torn[0].read_bytes() == b'{"seq": 6, "ev'
    result = verify_log(log_path, KEY)
    assert result.ok and result.records == 6
    note = json.loads(_lines(log_path)[-1])
    assert note["event"] == "audit.torn" and note["seq"] == 6
    assert "partial last record of 14 bytes" in note["detail"] and torn[0].name in note["detail"]


def test_an_edit_in_the_middle_stops_the_start_naming_the_record(log_path: Path) -> None:
    lines = _lines(log_path)
    lines[2] = lines[2].replace('"who":"ci-bot"', '"who":"mallory"')
    log_path.write_text("".join(lines))
    with pytest.raises(AuditError) as caught:
        AuditWriter(log_path, KEY).start()
    message = str(caught.value)
    assert "chain is broken at line 3 (seq 3): hmac does not match" in message
    assert "\n" not in message and "--audit-new-chain" in message
    assert len(_lines(log_path)) == 5  # nothing appended to a log that does not verify


def test_new_chain_moves_a_broken_log_aside_and_says_so(log_path: Path) -> None:
    lines = _lines(log_path)
    del lines[1]
    log_path.write_text("".join(lines))
    assert prepare_log(log_path, KEY, new_chain=True).notes[0][0] == "audit.new_chain"
    (broken,) = log_path.parent.glob("audit.jsonl.broken-*")
    assert len(_lines(broken)) == 4 and not log_path.exists()
    writer = AuditWriter(log_path, KEY, new_chain=True)
    writer.start()  # nothing left to repair: an empty new file
    writer.submit("audit.new_chain", detail=f"previous log moved to {broken.name}")
    writer.close()
    assert verify_log(log_path, KEY).ok


def test_rotation_continues_the_chain_across_files(log_path: Path) -> None:
    with AuditLog(log_path, KEY) as writer:  # a writer that keeps its file open
        writer.record("infer", request_id="before")
        aside = rotate_log(log_path, KEY)
        writer.record("infer", request_id="after")  # follows the path to the new file
    first = json.loads(_lines(log_path)[0])
    assert first["event"] == CONTINUED and first["seq"] == 7
    assert json.loads(_lines(log_path)[1])["request_id"] == "after"
    assert len(_lines(aside)) == 6
    assert verify_log(log_path, KEY).ok  # on its own, from the continuation record
    chain = verify_files([aside, log_path], KEY)
    assert chain.ok and chain.records == 8 and chain.head.seq == 8
    assert not verify_files([log_path, aside], KEY).ok  # out of order
    mine = AuditLog(log_path, KEY)  # a restarted writer continues the new file
    assert mine.record("infer")["seq"] == 9
    mine.close()


def test_a_replaced_empty_file_continues_the_chain(log_path: Path) -> None:
    with AuditLog(log_path, KEY) as writer:
        old = log_path.with_name("moved.jsonl")
        os.rename(log_path, old)  # e.g. logrotate without shipyard audit rotate
        log_path.touch()
        writer.record("infer")
    assert [json.loads(line)["event"] for line in _lines(log_path)] == [CONTINUED, "infer"]
    assert verify_files([old, log_path], KEY).ok


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_failed_write_leaves_the_chain_whole_and_is_retried(tmp_path: Path) -> None:
    real = tmp_path / "real.jsonl"
    link = tmp_path / "audit.jsonl"
    link.symlink_to(real)
    with AuditLog(link, KEY) as writer:
        writer.record("infer", request_id="1")
        link.unlink()
        link.symlink_to("/dev/full")
        with pytest.raises(AuditError, match="No space left on device"):
            writer.record("infer", request_id="2")
        link.unlink()
        link.symlink_to(real)
        writer.record("infer", request_id="2")
    assert [json.loads(line)["request_id"] for line in _lines(real)] == ["1", "2"]
    assert verify_log(real, KEY).ok
