"""Process isolation against a real server: a killed or hung model worker, and what clients see.

Models run with `isolation = "process"`; the tests find a version's worker through the
server's own manager (`ProcessRuntime.pid`) and signal it like an OOM killer or a stuck
native op would. Done means (issue 11): a worker SIGKILLed mid-batch answers its in-flight
requests 503 within 1 s, the model's ready endpoint and /v2/health/ready answer not ready
and come back, the next requests succeed and the restart is counted; a SIGSTOPped (hung) worker is
killed at its execution timeout; unload and stop leave no worker and no /dev/shm segment.
With two versions loaded, unversioned requests go to the one whose worker is up meanwhile.
Through `shipyard serve` as a subprocess: SIGTERM finishes the batch in the worker, exits 0
and stops the worker; a SIGKILLed server leaves no worker and no segment behind.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import shipyard
from shipyard.runtime.shm_tensors import SEGMENT_PREFIX
from shipyard.serving.isolation import ProcessRuntime
from shipyard.serving.server import RunningServer, start_in_thread
from shipyard.serving.settings import load_settings
from tests.faults._cli_server import cli_server
from tests.serving.test_acceptance import (
    calibrated_slow_graph,
    scale_graph,
    v2_json,
    v2_outputs,
    wait_for,
    write_model_toml,
)
from tests.serving.test_tfserving_http import strings_graph

pytestmark = pytest.mark.timeout(180)

ISOLATED = """isolation = "process"
[worker]
execution_timeout_s = 2
max_restart_backoff_s = 1
[runtime]
intra_op_threads = 1
"""
SLOW_TOML = (
    ISOLATED
    + """[batching]
max_batch_size = 4
max_queue_delay_us = 200_000
"""
)
EXECUTION_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("isolation") / "models"
    for name, graph, toml in [
        ("slow", calibrated_slow_graph(0.5), SLOW_TOML),
        ("scale", scale_graph(3.0), ISOLATED),
        ("scale_local", scale_graph(3.0), "[runtime]\nintra_op_threads = 1\n"),
        ("text", strings_graph(), ISOLATED),
        ("text_local", strings_graph(), ""),
    ]:
        shipyard.pack(graph, name=name, repo=root)
        write_model_toml(root / name, toml)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    settings = load_settings(repository=repo, port=0, grpc_port=0, poll_interval_s=0)
    with start_in_thread(settings=settings) as running:
        yield running


def runtime_of(server: RunningServer, model: str) -> ProcessRuntime:
    runtime = server.server.dataplane.manager.get(model).model.runtime
    assert isinstance(runtime, ProcessRuntime)
    return runtime


def wait_ready(server: RunningServer, model: str) -> None:
    def ready() -> bool:
        model_ok = httpx.get(f"{server.url}/v2/models/{model}/ready", timeout=5).status_code
        server_ok = httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code
        return model_ok == server_ok == 200

    wait_for(ready, f"{model} and the server to be ready", timeout_s=30)


def restarts(server: RunningServer, model: str, reason: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "shipyard_worker_restarts":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels == {
                    "model": model,
                    "version": "1",
                    "reason": reason,
                }:
                    return sample.value
    raise AssertionError(f"no shipyard_worker_restarts_total series for {model} ({reason})")


def segments() -> set[str]:
    """This process's shared-memory segments (the server runs in this test process)."""
    mine = f"{SEGMENT_PREFIX}{os.getpid()}-"
    return {name for name in os.listdir("/dev/shm") if name.startswith(mine)}


def gone(pid: int) -> bool:
    """No such process, or a zombie (an orphan whose new parent has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def workers_of(server_pid: int) -> list[int]:
    """The model workers a server process started (its children running runtime.worker)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == server_pid and b"shipyard.runtime.worker" in cmdline:
            found.append(int(entry))
    return found


def server_segments(server_pid: int) -> list[str]:
    prefix = f"{SEGMENT_PREFIX}{server_pid}-"
    return [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]


def x(rows: int, value: float = 1.0) -> np.ndarray:
    return np.full((rows, 4), value, dtype=np.float32) + np.arange(
        rows * 4, dtype=np.float32
    ).reshape(rows, 4)


def test_an_isolated_model_answers_as_the_same_model_in_process(server: RunningServer) -> None:
    url = server.url
    for rows in (1, 3, 100_000):  # 100k rows (1.6 MB) outgrow the first 1 MiB segments
        doc = v2_json("x", x(rows))
        isolated = httpx.post(f"{url}/v2/models/scale/infer", json=doc, timeout=60)
        local = httpx.post(f"{url}/v2/models/scale_local/infer", json=doc, timeout=60)
        assert isolated.status_code == local.status_code == 200, isolated.text
        got, want = v2_outputs(isolated.json()), v2_outputs(local.json())
        assert set(got) == set(want) == {"y", "s"}
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
        np.testing.assert_allclose(got["y"], x(rows) * 3.0)
    text = ["héllo", "", "ünïcode ✓", "x" * 5000]
    doc = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(text)], "data": text}]}
    isolated = httpx.post(f"{url}/v2/models/text/infer", json=doc, timeout=30)
    local = httpx.post(f"{url}/v2/models/text_local/infer", json=doc, timeout=30)
    assert isolated.status_code == local.status_code == 200, isolated.text
    assert isolated.json()["outputs"] == local.json()["outputs"]
    assert isolated.json()["outputs"][0]["data"] == text


def test_a_worker_killed_mid_batch_fails_its_requests_fast_and_comes_back(
    server: RunningServer,
) -> None:
    wait_ready(server, "slow")
    runtime = runtime_of(server, "slow")
    batcher = server.server.dataplane.manager.get("slow").batcher
    pid = runtime.pid
    assert pid is not None
    before = restarts(server, "slow", "crashed")
    held = segments()

    def post(value: float) -> tuple[httpx.Response, float]:
        response = httpx.post(
            f"{server.url}/v2/models/slow/infer", json=v2_json("x", x(1, value)), timeout=30
        )
        return response, time.monotonic()

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(post, float(i)) for i in range(3)]
        wait_for(lambda: batcher.in_flight == 3, "one batch of 3 to run in the worker")
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        answers = [f.result(timeout=10) for f in futures]
        model_ready = httpx.get(f"{server.url}/v2/models/slow/ready", timeout=5)
        server_ready = httpx.get(f"{server.url}/v2/health/ready", timeout=5)
    for response, answered in answers:
        assert response.status_code == 503, response.text
        assert answered - killed < 1.0
        error = response.json()["error"]
        assert f"worker process (pid {pid}) died of signal 9 (SIGKILL)" in error
        assert "restarting" in error
    for ready in (model_ready, server_ready):  # Triton's shape: 400 {"ready": false}
        assert ready.status_code == 400 and ready.json()["ready"] is False, ready.text
    down = httpx.post(f"{server.url}/v2/models/slow/infer", json=v2_json("x", x(1)), timeout=10)
    assert down.status_code in (200, 503)  # 503 while down; 200 if it is back already
    wait_ready(server, "slow")
    assert runtime.pid not in (None, pid) and gone(pid)
    assert restarts(server, "slow", "crashed") == before + 1
    after = httpx.post(f"{server.url}/v2/models/slow/infer", json=v2_json("x", x(1, 5)), timeout=30)
    assert after.status_code == 200, after.text
    np.testing.assert_allclose(v2_outputs(after.json())["y"], x(1, 5) * 2.0, rtol=1e-5)
    assert len(segments()) == len(held)  # the dead worker's two segments freed, two new ones


def test_a_hung_worker_is_killed_at_its_execution_timeout(server: RunningServer) -> None:
    wait_ready(server, "slow")
    runtime = runtime_of(server, "slow")
    pid = runtime.pid
    assert pid is not None
    before = restarts(server, "slow", "timeout")
    os.kill(pid, signal.SIGSTOP)  # stuck in a native call, as far as the server can tell
    try:
        started = time.monotonic()
        response = httpx.post(
            f"{server.url}/v2/models/slow/infer", json=v2_json("x", x(1)), timeout=30
        )
        took = time.monotonic() - started
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGCONT)
    assert response.status_code == 503, response.text
    assert (
        "did not answer within execution_timeout_s = 2 s and was killed" in response.json()["error"]
    )
    # the batch waits up to 0.2 s to fill, then the timeout counts; 1 s for a loaded machine
    assert EXECUTION_TIMEOUT_S <= took < EXECUTION_TIMEOUT_S + 1.2
    wait_for(lambda: gone(pid), "the hung worker to be killed", timeout_s=5)
    wait_ready(server, "slow")
    assert restarts(server, "slow", "timeout") == before + 1
    again = httpx.post(f"{server.url}/v2/models/slow/infer", json=v2_json("x", x(1)), timeout=30)
    assert again.status_code == 200, again.text


def test_unload_and_stop_leave_no_worker_and_no_segment(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shipyard.pack(scale_graph(2.0), name="iso", repo=repo)
    write_model_toml(repo / "iso", ISOLATED)
    others = segments()  # the module's server's, which keeps running
    settings = load_settings(repository=repo, port=0, grpc_port=0, poll_interval_s=0)
    pids = []
    with start_in_thread(settings=settings) as running:
        first = runtime_of(running, "iso").pid
        assert first is not None and len(segments() - others) == 2
        pids.append(first)
        unload = httpx.post(f"{running.url}/v2/repository/models/iso/unload", timeout=30)
        assert unload.status_code == 200, unload.text
        assert gone(first) and not segments() - others
        load = httpx.post(f"{running.url}/v2/repository/models/iso/load", timeout=60)
        assert load.status_code == 200, load.text
        second = runtime_of(running, "iso").pid
        assert second is not None and second != first
        pids.append(second)
        doc = v2_json("x", x(2))
        answer = httpx.post(f"{running.url}/v2/models/iso/infer", json=doc, timeout=30)
        assert answer.status_code == 200, answer.text
    assert all(gone(pid) for pid in pids)
    assert not segments() - others


def test_sigterm_drains_an_isolated_batch_then_stops_its_worker(repo: Path) -> None:
    with cli_server(_only(repo, "slow")) as served:
        (worker,) = workers_of(served.proc.pid)
        assert len(server_segments(served.proc.pid)) == 2
        with ThreadPoolExecutor(max_workers=1) as pool:
            doc = v2_json("x", x(1, 4.0))
            pending = pool.submit(
                httpx.post, f"{served.url}/v2/models/slow/infer", json=doc, timeout=30
            )
            wait_for(lambda: _busy(worker), "the batch to run in the worker")
            served.proc.send_signal(signal.SIGTERM)
            answer = pending.result(timeout=30)
        assert served.proc.wait(30) == 0
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(v2_outputs(answer.json())["y"], x(1, 4.0) * 2.0, rtol=1e-5)
    assert gone(worker) and not server_segments(served.proc.pid)


def test_a_sigkilled_server_leaves_no_worker_and_no_segment(repo: Path) -> None:
    with cli_server(_only(repo, "slow")) as served:
        (worker,) = workers_of(served.proc.pid)
        with ThreadPoolExecutor(max_workers=1) as pool:
            doc = v2_json("x", x(1))
            pending = pool.submit(
                httpx.post, f"{served.url}/v2/models/slow/infer", json=doc, timeout=30
            )
            wait_for(lambda: _busy(worker), "the batch to run in the worker")
            served.proc.kill()  # no drain, no cleanup: the OOM killer's way
            with pytest.raises(httpx.HTTPError):
                pending.result(timeout=30)
        served.proc.wait(10)
        # the worker sees its pipe close (or its watchdog, the server gone); the segments
        # go with the server's resource tracker, which outlives it to unlink them
        wait_for(lambda: gone(worker), "the orphaned worker to exit", timeout_s=10)
        wait_for(lambda: not server_segments(served.proc.pid), "the segments to go", timeout_s=10)


def _only(repo: Path, name: str) -> Path:
    """A repository holding just `name` from the module's (a CLI server loads every model)."""
    alone = repo.parent / f"only-{name}"
    if not alone.exists():
        alone.mkdir()
        (alone / name).symlink_to(repo / name, target_is_directory=True)
    return alone


def _busy(pid: int) -> bool:
    """Whether the process is using CPU now: its user time grows over 50 ms."""

    def user_ticks() -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11])

    before = user_ticks()
    time.sleep(0.05)
    return user_ticks() > before


def test_while_a_worker_is_down_unversioned_requests_go_to_a_version_that_can_answer(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "models"
    shipyard.pack(scale_graph(2.0), name="two", repo=repo)  # version 1: y = 2x
    shipyard.pack(scale_graph(3.0), name="two", repo=repo)  # version 2: y = 3x
    write_model_toml(repo / "two", ISOLATED + "[version_policy]\nlatest = 2\n")
    onnx_file = repo / "two" / "2" / "model.onnx"
    good = onnx_file.read_bytes()
    settings = load_settings(repository=repo, port=0, grpc_port=0, poll_interval_s=0)
    doc = v2_json("x", x(1))
    with start_in_thread(settings=settings) as running:
        newest = running.server.dataplane.manager.get("two", 2).model.runtime
        assert isinstance(newest, ProcessRuntime)
        pid = newest.pid
        assert pid is not None

        def answered_by() -> str:
            response = httpx.post(f"{running.url}/v2/models/two/infer", json=doc, timeout=30)
            assert response.status_code == 200, response.text
            return str(response.json()["model_version"])

        assert answered_by() == "2"
        onnx_file.write_bytes(good + b"\0")  # its restarts fail until the file is back
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: newest.restarts >= 2, "version 2's restarts to fail")
        named = httpx.post(f"{running.url}/v2/models/two/versions/2/infer", json=doc, timeout=30)
        assert named.status_code == 503
        assert "could not be restarted" in named.json()["error"]
        ready = httpx.get(f"{running.url}/v2/models/two/versions/2/ready", timeout=5)
        assert ready.status_code == 400
        assert answered_by() == "1"  # the router skips the version that cannot answer
        assert httpx.get(f"{running.url}/v2/models/two/ready", timeout=5).status_code == 200
        assert httpx.get(f"{running.url}/v2/health/ready", timeout=5).status_code == 200
        onnx_file.write_bytes(good)
        wait_for(lambda: newest.down is None, "version 2's worker to be back")
        assert answered_by() == "2"
