"""The audit log fails closed, visibly, and recovers by itself: a real server whose log
fills up (writes to /dev/full fail with ENOSPC, a real OS error) and then has space again."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

import shipyard
from shipyard.codecs import encode_request
from shipyard.security.audit_chain import verify_log
from shipyard.security.keys import KeyPaths, init_keys, read_secret
from shipyard.serving.server import start_in_thread
from shipyard.serving.settings import load_settings

BODY = encode_request({"x": np.ones((2, 4), dtype=np.float32)})[0]
FULL = Path("/dev/full")
pytestmark = pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux)")


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("SHIPYARD_KEK", "SHIPYARD_AUDIT_KEY", "SHIPYARD_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    yield


@pytest.fixture
def keys(tmp_path: Path) -> KeyPaths:
    return init_keys(tmp_path / "keys")


def point(link: Path, target: Path) -> None:
    """Atomically re-point the symlink `link` (the log path) at `target`."""
    tmp = link.with_name(".swap")
    tmp.symlink_to(target)
    os.replace(tmp, link)


def wait_for(predicate: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_disk_full_refuses_audited_calls_then_recovers_with_no_record_lost(
    affine_model: onnx.ModelProto, repo: Path, keys: KeyPaths, tmp_path: Path
) -> None:
    shipyard.pack(affine_model, name="affine", repo=repo)
    folder = tmp_path / "audit"
    folder.mkdir()
    real = folder / "real.jsonl"
    real.touch()
    log = folder / "audit.jsonl"
    log.symlink_to(real)
    settings = load_settings(
        repository=repo,
        port=0,
        poll_interval_s=0,
        audit_log=log,
        audit_key_file=keys.audit_key,
        grpc_port=0,
    )
    server = start_in_thread(settings=settings)
    served = 0
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    tensor = grpcclient.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 4), dtype=np.float32))
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:

            def infer() -> httpx.Response:
                return client.post("/v2/models/affine/infer", content=BODY)

            for _ in range(3):
                assert infer().status_code == 200
                served += 1
            wait_for(lambda: real.read_text().count('"event":"infer"') == 3)  # all written
            point(log, FULL)  # the disk is full
            assert infer().status_code == 200  # served before anyone knew; its record waits
            served += 1
            wait_for(lambda: client.get("/v2/health/ready").status_code == 503)

            ready = client.get("/v2/health/ready")
            assert ready.json()["ready"] is False
            reason = ready.json()["error"]
            assert reason.startswith("audit log cannot be written: ")
            assert "No space left on device" in reason and reason.endswith("until it can")
            refused = infer()
            assert refused.status_code == 503
            cause = reason.removesuffix("; audited calls are refused until it can")
            assert refused.json()["error"] == f"{cause}; the call was not run"
            assert client.post("/v2/repository/index").status_code == 503  # admin is audited
            with pytest.raises(InferenceServerException, match="UNAVAILABLE") as caught:
                grpc.infer("affine", [tensor])  # gRPC fails closed too
            assert "audit log cannot be written" in str(caught.value)
            assert client.get("/v2/models/affine").status_code == 200  # metadata is not
            metrics = client.get("/metrics").text
            assert "shipyard_audit_healthy 0.0" in metrics
            failures = [
                ln
                for ln in metrics.splitlines()
                if ln.startswith("shipyard_audit_write_failures_total ")
            ]
            assert failures and float(failures[0].split()[1]) >= 1

            point(log, real)  # space is freed
            wait_for(lambda: client.get("/v2/health/ready").status_code == 200)
            assert "shipyard_audit_healthy 1.0" in client.get("/metrics").text
            for _ in range(2):
                assert infer().status_code == 200
                served += 1
            grpc.infer("affine", [tensor])
            served += 1
    finally:
        grpc.close()
        server.stop()

    result = verify_log(real, read_secret(keys.audit_key))
    assert result.ok, result.problem
    written = [json.loads(line) for line in real.read_text().splitlines()]
    infers = [r for r in written if r["event"] == "infer"]
    assert len(infers) == served and all(r["outcome"] == "ok" for r in infers)
    assert [r["seq"] for r in written] == list(range(1, len(written) + 1))
    assert written[-1]["event"] == "server.stop"


def test_a_server_restarted_after_a_crash_mid_record_sets_the_torn_bytes_aside(
    affine_model: onnx.ModelProto, repo: Path, keys: KeyPaths, tmp_path: Path
) -> None:
    shipyard.pack(affine_model, name="affine", repo=repo)
    log = tmp_path / "audit.jsonl"
    settings = load_settings(
        repository=repo, port=0, poll_interval_s=0, audit_log=log, audit_key_file=keys.audit_key
    )
    start_in_thread(settings=settings).stop()
    with log.open("ab") as fh:
        fh.write(b'{"at":"2026-')  # the crash
    server = start_in_thread(settings=settings)  # starts instead of refusing
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.post("/v2/models/affine/infer", content=BODY).status_code == 200
    finally:
        server.stop()
    key = read_secret(keys.audit_key)
    assert verify_log(log, key).ok
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    first_stop = events.index("server.stop")
    assert events[first_stop + 1 : first_stop + 3] == ["audit.torn", "server.start"]
    assert events.count("infer") == 1 and events[-1] == "server.stop"
    (torn,) = tmp_path.glob("audit.jsonl.torn-*")
    assert torn.read_bytes() == b'{"at":"2026-'
