"""SIGTERM drains `shipyard serve`: readiness 503 at once, requests answered through the
shutdown delay, listeners closed, every in-flight HTTP request and gRPC call answered, exit
0; a second SIGTERM exits at once."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families

import shipyard
from tests.faults._cli_server import CliServer, affine_repo, cli_server
from tests.serving.test_acceptance import calibrated_slow_graph, write_model_toml

HTTP_REQUESTS = 8
GRPC_REQUESTS = 2
RUN_S = 0.3
"""One request's run on the slow model; they run one at a time (batch size 1, 1 instance)."""
DELAY_S = 1.0
DRAIN_S = 20.0
_GRPC_LISTENING = re.compile(r"gRPC listening on 127\.0\.0\.1:(\d+)")


def _slow_repo(path: Path) -> Path:
    shipyard.pack(calibrated_slow_graph(RUN_S), name="slow", repo=path)
    write_model_toml(
        path / "slow",
        "instances = 1\nwarmup = false\n[batching]\nmax_batch_size = 1\n"
        "[runtime]\nintra_op_threads = 1\n",
    )
    return path


def _queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "shipyard_queue_depth" and sample.labels.get("model") == "slow":
                return sample.value
    return 0.0


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def _grpc_port(server: CliServer) -> int:
    match = _GRPC_LISTENING.search(server.wait_for_line("gRPC listening"))
    assert match is not None
    return int(match.group(1))


@pytest.mark.timeout(120)
def test_sigterm_drains_in_flight_http_and_grpc_then_exits_0(tmp_path: Path) -> None:
    repo = _slow_repo(tmp_path / "models")
    rows = [np.full((1, 4), i, dtype=np.float32) for i in range(HTTP_REQUESTS + GRPC_REQUESTS)]
    args = ("--grpc-port", "0", "--shutdown-delay", str(DELAY_S), "--drain-timeout", str(DRAIN_S))
    with cli_server(repo, *args) as server:
        grpc_port = _grpc_port(server)
        grpc = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")

        def http_infer(x: np.ndarray) -> tuple[int, list[float]]:
            body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                "data": x.ravel().tolist()}]}  # fmt: skip
            response = httpx.post(f"{server.url}/v2/models/slow/infer", json=body, timeout=60)
            data = response.json()["outputs"][0]["data"] if response.status_code == 200 else []
            return response.status_code, data

        def grpc_infer(x: np.ndarray) -> tuple[int, list[float]]:
            tensor = triton.InferInput("x", [1, 4], "FP32")
            tensor.set_data_from_numpy(x)
            result = grpc.infer("slow", [tensor], client_timeout=60)
            return 200, result.as_numpy("y").ravel().tolist()

        total = len(rows)
        with ThreadPoolExecutor(total) as pool:
            calls: list[Future[tuple[int, list[float]]]] = [
                pool.submit(http_infer if i < HTTP_REQUESTS else grpc_infer, x)
                for i, x in enumerate(rows)
            ]
            # every request is in: one runs, the others wait in the model's queue
            deadline = time.monotonic() + 20
            while _queue_depth(server.url) < total - 1:
                assert time.monotonic() < deadline, "the requests never queued up"
                time.sleep(0.02)
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)

            # readiness off at once, liveness on, requests still answered during the delay
            ready = httpx.get(f"{server.url}/v2/health/ready", timeout=5)
            live = httpx.get(f"{server.url}/v2/health/live", timeout=5)
            metadata = httpx.get(f"{server.url}/v2/models/slow", timeout=5)
            model_ready = httpx.get(f"{server.url}/v2/models/slow/ready", timeout=5)
            grpc_ready, grpc_live = grpc.is_server_ready(), grpc.is_server_live()
            assert time.monotonic() - signalled < DELAY_S, "the probes took past the delay"
            assert ready.status_code == 503, ready.text
            assert "shutting down" in ready.json()["error"]
            assert live.status_code == 200
            assert metadata.status_code == 200
            assert model_ready.status_code == 400  # V2: a model that is not ready
            assert (grpc_ready, grpc_live) == (False, True)

            # after the delay both listeners refuse new connections, with requests still running
            while not (_refused(server.port) and _refused(grpc_port)):
                assert time.monotonic() - signalled < DELAY_S + 5, "listeners never closed"
                time.sleep(0.02)
            closed = time.monotonic() - signalled
            assert closed >= DELAY_S - 0.05, closed
            assert not all(c.done() for c in calls), "nothing was left in flight to drain"
            answers = [c.result(timeout=60) for c in calls]
        grpc.close()
        rc = server.proc.wait(DELAY_S + DRAIN_S)
        exited = time.monotonic() - signalled
    assert rc == 0, "\n".join(server.lines)
    assert exited < DELAY_S + DRAIN_S, exited
    for (status, data), x in zip(answers, rows, strict=True):
        assert status == 200
        np.testing.assert_allclose(data, (2 * x).ravel())
    shutting = [line for line in server.lines if "shutting down" in line]
    assert len(shutting) == 1 and f"(in-flight requests: {total})" in shutting[0], shutting
    assert any("Finished server process" in line for line in server.lines)
    assert not any("drain timeout" in line for line in server.lines)


@pytest.mark.timeout(60)
def test_a_second_sigterm_during_the_drain_exits_at_once(tmp_path: Path) -> None:
    repo = affine_repo(tmp_path / "models")
    with cli_server(repo, "--shutdown-delay", "60") as server:
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_line("shutting down (in-flight requests: 0)")
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 503
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            rc = server.proc.wait(5)
        except subprocess.TimeoutExpired:
            pytest.fail("a second SIGTERM did not end the process")
        assert time.monotonic() - started < 5
    assert rc == -signal.SIGTERM, rc
    assert any("received again while shutting down" in line for line in server.lines)


@pytest.mark.timeout(90)
def test_a_request_past_the_drain_timeout_is_cut_and_counted(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shipyard.pack(calibrated_slow_graph(2.0), name="slow", repo=repo)
    toml = "instances = 1\nwarmup = false\n[runtime]\nintra_op_threads = 1\n"
    write_model_toml(repo / "slow", toml)
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    with cli_server(repo, "--drain-timeout", "1") as server, ThreadPoolExecutor(1) as pool:

        def infer() -> int | str:
            try:
                url = f"{server.url}/v2/models/slow/infer"
                return httpx.post(url, json=body, timeout=60).status_code
            except httpx.HTTPError as exc:
                return type(exc).__name__

        call = pool.submit(infer)
        deadline = time.monotonic() + 20
        while "shipyard_requests_in_flight 1.0" not in httpx.get(f"{server.url}/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.proc.send_signal(signal.SIGTERM)
        rc = server.proc.wait(30)
        outcome = call.result(timeout=10)
    assert rc == 0
    assert outcome != 200
    cut = [line for line in server.lines if "drain timeout" in line]
    assert len(cut) == 1 and "cutting the in-flight requests (1)" in cut[0], server.lines
    assert not any("Traceback" in line for line in server.lines)


@pytest.mark.timeout(90)
def test_sigterm_while_the_models_load_stops_once_loaded_and_exits_0(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shipyard.pack(calibrated_slow_graph(0.5), name="slow", repo=repo)  # warm-up runs it
    write_model_toml(repo / "slow", "[runtime]\nintra_op_threads = 1\n")
    with cli_server(repo, "--shutdown-delay", "30", ready=False) as server:
        server.wait_for_line("loading slow version 1", timeout_s=30)
        server.proc.send_signal(signal.SIGTERM)
        rc = server.proc.wait(30)  # no shutdown delay: it never took traffic
    assert rc == 0, "\n".join(server.lines)
    assert any("received while starting" in line for line in server.lines)
    assert any("Finished server process" in line for line in server.lines)
