"""The audit log never loses a record: a real server whose log is slow, full, or whose writer dies.

- slow: another holder of the log's flock (what `shipyard audit rotate` takes) stalls the
  writer; audited calls wait for room in a backlog of 4 without blocking the event loop, and
  every record is written once the lock is released;
- full: the log path points at /dev/full (ENOSPC from the kernel); audited calls answer 503
  before they run, readiness says why, liveness stays 200, and the backlog is written in
  order when there is space again; a stop while it is still full is bounded by the drain
  timeout and says how many records it could not write;
- dead: the writer thread dies on an injected bug; the same 503 and readiness reason, the
  writer is restarted and carries on with the record it died on.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import shipyard
from shipyard.codecs import encode_request
from shipyard.security.audit_chain import verify_log
from shipyard.security.audit_log import AuditLog
from shipyard.security.keys import KeyPaths, init_keys, read_secret
from shipyard.serving.audit_trail import AuditWriter
from shipyard.serving.calls import Call, CallContext, CallEvent, Event, Events
from shipyard.serving.server import RunningServer, start_in_thread
from shipyard.serving.settings import load_settings
from tests.conftest import make_affine_onnx

BODY = encode_request({"x": np.ones((2, 4), dtype=np.float32)})[0]
INFER = "/v2/models/affine/infer"
FULL = Path("/dev/full")
CONCURRENT = 50
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("SHIPYARD_KEK", "SHIPYARD_AUDIT_KEY", "SHIPYARD_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    yield


@pytest.fixture
def keys(tmp_path: Path) -> KeyPaths:
    return init_keys(tmp_path / "keys")


def serve(repo: Path, log: Path, keys: KeyPaths, **extra: Any) -> RunningServer:
    shipyard.pack(make_affine_onnx(), name="affine", repo=repo)
    settings = load_settings(
        repository=repo,
        port=0,
        poll_interval_s=0,
        audit_log=log,
        audit_key_file=keys.audit_key,
        **extra,
    )
    return start_in_thread(settings=settings)


def wait_for(predicate: Callable[[], object], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def written(log: Path, keys: KeyPaths) -> list[dict[str, Any]]:
    """The log's records, after checking the whole chain."""
    return written_with(log, read_secret(keys.audit_key))


def written_with(log: Path, key: bytes) -> list[dict[str, Any]]:
    result = verify_log(log, key)
    assert result.ok, result.problem
    return [json.loads(line) for line in log.read_text().splitlines()]


def point(link: Path, target: Path) -> None:
    """Atomically re-point the symlink `link` (the log path) at `target`."""
    tmp = link.with_name(".swap")
    tmp.symlink_to(target)
    os.replace(tmp, link)


class Burst:
    """`count` concurrent audited requests from a thread of their own (its own event loop)."""

    def __init__(self, url: str, count: int) -> None:
        self.statuses: list[int] = []
        self.bodies: list[Any] = []
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(url, count),))
        self._thread.start()

    async def _run(self, url: str, count: int) -> None:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

            async def one() -> None:
                response = await client.post(INFER, content=BODY)
                self.statuses.append(response.status_code)
                self.bodies.append(response.json())

            await asyncio.gather(*(one() for _ in range(count)))

    def join(self) -> list[int]:
        self._thread.join(60)
        assert not self._thread.is_alive(), "requests still unanswered"
        return self.statuses


def test_a_stalled_writer_slows_audited_calls_down_and_loses_nothing(
    repo: Path, keys: KeyPaths, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    running = serve(repo, log, keys, audit_queue_size=4)
    writer = running.server.security.audit
    assert writer is not None
    locked = False
    fd = -1
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            assert client.post(INFER, content=BODY).status_code == 200
            assert writer.flush(10)
            fd = os.open(log, os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX)  # another process holds the log: every write waits
            locked = True
            burst = Burst(running.url, CONCURRENT)
            # the writer holds one record and 3 more fit: the other 46 calls wait for room
            wait_for(lambda: writer.waits == CONCURRENT - 4)
            assert writer.pending == 4
            started = time.perf_counter()
            assert client.get("/v2/health/live").status_code == 200  # the loop is not blocked
            assert time.perf_counter() - started < 1.0
            assert client.get("/v2/models/affine").status_code == 200
            assert client.get("/v2/health/ready").status_code == 200  # slow is not broken
            assert metric(client, "shipyard_audit_backpressure_waits_total") == CONCURRENT - 4
            assert len(burst.statuses) <= 4  # a response goes out only once its record is queued
            fcntl.flock(fd, fcntl.LOCK_UN)
            locked = False
            assert burst.join() == [200] * CONCURRENT
            assert writer.flush(10)
            assert metric(client, "shipyard_audit_pending_records") == 0
    finally:
        if locked:
            fcntl.flock(fd, fcntl.LOCK_UN)
        if fd >= 0:
            os.close(fd)
        running.stop()
    records = written(log, keys)
    infers = [r for r in records if r["event"] == "infer"]
    assert len(infers) == CONCURRENT + 1 and all(r["outcome"] == "ok" for r in infers)
    assert records[-1]["event"] == "server.stop"


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux)")
def test_disk_full_refuses_before_acting_and_the_backlog_is_written_in_order_after(
    repo: Path, keys: KeyPaths, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shipyard.serving.audit_trail")
    real = tmp_path / "real.jsonl"
    real.touch()
    log = tmp_path / "audit.jsonl"
    log.symlink_to(real)
    running = serve(repo, log, keys)
    writer = running.server.security.audit
    assert writer is not None
    served = 0
    try:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            assert client.post(INFER, content=BODY).status_code == 200
            served += 1
            assert writer.flush(10)
            point(log, FULL)  # the disk fills up under calls in flight
            burst = Burst(running.url, 10)
            statuses = burst.join()
            # each call either ran (its record waits in memory) or was refused before running
            assert set(statuses) <= {200, 503} and 200 in statuses
            served += statuses.count(200)
            for status, body in zip(statuses, burst.bodies, strict=True):
                if status == 503:
                    assert body["error"].endswith("; the call was not run")
            wait_for(lambda: metric(client, "shipyard_audit_write_failures_total") >= 3)

            ready = client.get("/v2/health/ready")
            assert ready.status_code == 503 and ready.headers["Retry-After"] == "1"
            reason = ready.json()["error"]
            assert reason.startswith("audit log cannot be written: ")
            assert "No space left on device" in reason and "\n" not in reason
            refused = client.post(INFER, content=BODY)
            assert refused.status_code == 503
            message = refused.json()["error"]
            assert message.startswith("audit log cannot be written: ")
            assert "No space left on device" in message and message.endswith("was not run")
            unload = client.post("/v2/repository/models/affine/unload")
            assert unload.status_code == 503  # an admin call is refused before it acts ...
            assert client.get("/v2/models/affine/ready").status_code == 200  # ... so still up
            assert client.get("/v2/health/live").status_code == 200
            assert client.get("/v2/models/affine").status_code == 200  # unaudited: served
            assert metric(client, "shipyard_audit_healthy") == 0
            assert metric(client, "shipyard_audit_pending_records") == statuses.count(200)

            point(log, real)  # space is freed
            wait_for(lambda: client.get("/v2/health/ready").status_code == 200)
            assert client.post(INFER, content=BODY).status_code == 200
            served += 1
            assert writer.flush(10)
            assert metric(client, "shipyard_audit_healthy") == 1
    finally:
        running.stop()
    infers = [r for r in written(real, keys) if r["event"] == "infer"]
    assert len(infers) == served and all(r["outcome"] == "ok" for r in infers)
    lines = [r.getMessage() for r in caplog.records if r.name == "shipyard.serving.audit_trail"]
    assert len([m for m in lines if m.startswith("audit log cannot be written")]) == 1
    assert len([m for m in lines if "can be written again" in m]) == 1  # once, not per record


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux)")
def test_stopping_while_the_disk_is_full_is_bounded_by_the_drain_timeout(
    repo: Path, keys: KeyPaths, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shipyard.serving.audit_trail")
    real = tmp_path / "real.jsonl"
    real.touch()
    log = tmp_path / "audit.jsonl"
    log.symlink_to(real)
    running = serve(repo, log, keys, drain_timeout_s=1)
    writer = running.server.security.audit
    assert writer is not None
    with httpx.Client(base_url=running.url, timeout=10) as client:
        point(log, FULL)
        assert client.post(INFER, content=BODY).status_code == 200
        wait_for(lambda: client.get("/v2/health/ready").status_code == 503)
    started = time.monotonic()
    running.stop()
    assert time.monotonic() - started < 6  # 1 s of drain timeout, then it gives up
    assert writer.unwritten >= 2  # the infer and server.stop records; said once, as an error
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(
        m.startswith(f"stopping with {writer.unwritten} audit records unwritten") for m in errors
    )


def test_a_dead_writer_refuses_audited_calls_until_its_restart_writes_again(
    repo: Path, keys: KeyPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    original = AuditLog.record
    die = threading.Event()
    hold = threading.Event()
    release = threading.Event()

    def faulty(self: AuditLog, event: str, **fields: Any) -> dict[str, Any]:
        if event == "infer" and die.is_set():
            die.clear()
            hold.set()
            raise RuntimeError("injected writer bug")
        if hold.is_set():
            assert release.wait(30)  # the restarted writer waits here until the test lets go
        return original(self, event, **fields)

    monkeypatch.setattr(AuditLog, "record", faulty)
    running = serve(repo, log, keys)
    writer = running.server.security.audit
    assert writer is not None
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            assert client.post(INFER, content=BODY).status_code == 200
            assert writer.flush(10)
            die.set()
            assert client.post(INFER, content=BODY).status_code == 200  # its record kills it
            wait_for(lambda: client.get("/v2/health/ready").status_code == 503)
            reason = client.get("/v2/health/ready").json()["error"]
            cause = "audit log cannot be written: its writer thread died (RuntimeError: "
            assert reason.startswith(cause + "injected writer bug)")
            refused = client.post(INFER, content=BODY)
            assert refused.status_code == 503
            assert refused.json()["error"].startswith(cause)
            assert refused.json()["error"].endswith("; the call was not run")
            assert client.get("/v2/health/live").status_code == 200
            # restarted after its back-off; still refusing until a write succeeds
            wait_for(lambda: metric(client, "shipyard_audit_writer_restarts_total") == 1)
            assert client.get("/v2/health/ready").status_code == 503
            release.set()
            wait_for(lambda: client.get("/v2/health/ready").status_code == 200)
            assert client.post(INFER, content=BODY).status_code == 200
    finally:
        release.set()
        running.stop()
    infers = [r for r in written(log, keys) if r["event"] == "infer"]
    assert len(infers) == 3  # the record it died on was written by its successor, once
    assert writer.restarts == 1


def test_a_write_blocked_at_stop_is_given_up_on_in_time_and_its_records_follow(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = b"k" * 32
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter(log, key)
    writer.start()
    writer.submit("server.start")
    assert writer.flush(10)
    fd = os.open(log, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        writer.submit("infer", who="a")
        writer.submit("server.stop")
        started = time.monotonic()
        writer.close(timeout_s=0.5)
        assert time.monotonic() - started < 3
        assert writer.unwritten == 2
        assert "stopping with 2 audit records unwritten: the writer is still writing" in caplog.text
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    wait_for(lambda: writer.pending == 0)  # the process lived on: they were written after all
    assert [r["event"] for r in written_with(log, key)] == ["server.start", "infer", "server.stop"]


def test_an_audited_call_cancelled_while_waiting_for_room_still_emits_its_event() -> None:
    events = Events()
    seen: list[Event] = []
    events.listeners.append(seen.append)
    never: asyncio.Future[None] | None = None

    async def full() -> None:
        nonlocal never
        never = asyncio.get_running_loop().create_future()
        await never

    events.backpressure.append(full)

    async def main() -> None:
        call = Call(CallContext(), action="infer", model="m", version=None)
        task = asyncio.create_task(events.finish(call, status=200))
        while never is None:
            await asyncio.sleep(0)
        assert not seen  # waiting for room
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert len(seen) == 1 and isinstance(seen[0], CallEvent) and seen[0].status == 200


def test_a_record_that_kills_the_writer_three_times_is_replaced_by_one_naming_it(
    tmp_path: Path,
) -> None:
    key = b"k" * 32
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter(log, key, restart_s=0.01)
    writer.start()
    writer.submit("infer", who="a", request_id="r-1", bytes_in=object())  # a bug: not JSON
    writer.submit("server.stop")
    assert writer.flush(10)
    writer.close()
    assert writer.restarts == 3 and writer.problem is None
    first, second = written_with(log, key)
    assert (first["event"], first["outcome"], first["request_id"]) == (
        "audit.unwritable",
        "error",
        "r-1",
    )
    assert first["detail"].startswith("a infer record could not be written (TypeError: ")
    assert second["event"] == "server.stop"
