"""Queue policy against a real server and a slow model, as exact counts (Triton's L0_model_queue).

One model runs one ~0.2 s batch at a time (`max_batch_size = 1`, one instance) behind a queue
of 8 with two priority levels. Each test first puts a "blocker" request on the model and waits
until it runs, so what follows queues behind it, deterministically: the tests watch the
server's own batcher (queue depth, requests in flight) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

import shipyard
from shipyard.serving.batching import Batcher
from shipyard.serving.server import RunningServer, start_in_thread
from shipyard.serving.settings import load_settings
from tests.serving.test_acceptance import (
    calibrated_slow_graph,
    v2_json,
    wait_for,
    write_model_toml,
)

QUEUE = 8
MODEL_TOML = f"""instances = 1
[batching]
max_batch_size = 1
max_queue_size = {QUEUE}
[queue]
priority_levels = 2
[runtime]
intra_op_threads = 1
"""

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("queue") / "models"
    shipyard.pack(calibrated_slow_graph(0.2), name="slow", repo=repo)
    write_model_toml(repo / "slow", MODEL_TOML)
    settings = load_settings(repository=repo, port=0, grpc_port=0, poll_interval_s=0)
    with start_in_thread(settings=settings) as running:
        yield running


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def batcher_of(server: RunningServer) -> Batcher:
    return server.server.dataplane.manager.get("slow").batcher


def x(value: float) -> np.ndarray:
    return np.full((1, 4), value, dtype=np.float32)


def body(value: float, **parameters: Any) -> dict[str, Any]:
    doc = v2_json("x", x(value))
    if parameters:
        doc["parameters"] = parameters
    return doc


def start_blocker(server: RunningServer, pool: ThreadPoolExecutor) -> Future[httpx.Response]:
    """A request that runs on the model's only worker once this returns."""
    batcher = batcher_of(server)
    assert batcher.depth == 0 and batcher.in_flight == 0

    def post() -> httpx.Response:
        return httpx.post(f"{server.url}/v2/models/slow/infer", json=body(0.0), timeout=30)

    blocker = pool.submit(post)
    wait_for(lambda: batcher.in_flight == 1, "the blocker to run")
    return blocker


@contextmanager
def grpc_client(server: RunningServer) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        yield client
    finally:
        client.close()


def grpc_input(value: float) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x(value))
    return tensor


def executions(server: RunningServer) -> int:
    stats = httpx.get(f"{server.url}/v2/models/slow/stats", timeout=10).json()
    return int(stats["model_stats"][0]["execution_count"])


def drops(server: RunningServer, reason: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "shipyard_queue_drops":
            for sample in family.samples:
                labels = sample.labels
                ours = labels["model"] == "slow" and labels["reason"] == reason
                if sample.name.endswith("_total") and ours:
                    return sample.value
    return 0.0


def test_a_queue_of_8_and_10_extra_requests_refuses_exactly_2(
    server: RunningServer, pool: ThreadPoolExecutor
) -> None:
    before = drops(server, "queue_full")
    blocker = start_blocker(server, pool)

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=10, max_keepalive_connections=10)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as http:
            await asyncio.gather(*(http.get("/v2/health/live") for _ in range(10)))
            return await asyncio.gather(
                *(http.post("/v2/models/slow/infer", json=body(float(i))) for i in range(10))
            )

    responses = asyncio.run(burst())
    assert blocker.result().status_code == 200
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * QUEUE + [503] * 2, codes
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            assert "overloaded" in response.json()["error"]
        else:
            value = response.json()["outputs"][0]["data"][0]
            assert value in [2.0 * i for i in range(10)]
    assert drops(server, "queue_full") - before == 2


def test_a_10ms_timeout_behind_a_200ms_batch_never_runs_and_gets_504(
    server: RunningServer, pool: ThreadPoolExecutor
) -> None:
    runs = executions(server)
    before = drops(server, "timeout")
    blocker = start_blocker(server, pool)
    started = time.perf_counter()
    late = httpx.post(
        f"{server.url}/v2/models/slow/infer", json=body(1.0, timeout=10_000), timeout=30
    )
    answered_s = time.perf_counter() - started
    assert not blocker.done(), "the 504 came only after the blocking batch"
    assert late.status_code == 504, late.text
    message = late.json()["error"]
    assert "timeout of 10000 µs" in message and "never ran" in message
    assert answered_s < 0.15, answered_s
    assert blocker.result().status_code == 200
    assert executions(server) == runs + 1  # the blocker ran; the late request never did
    assert drops(server, "timeout") - before == 1


def test_a_higher_priority_request_queued_after_lower_ones_runs_first(
    server: RunningServer, pool: ThreadPoolExecutor
) -> None:
    batcher = batcher_of(server)
    blocker = start_blocker(server, pool)
    finished: list[str] = []

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:

            async def one(tag: str, value: float, **parameters: Any) -> None:
                response = await http.post("/v2/models/slow/infer", json=body(value, **parameters))
                assert response.status_code == 200, response.text
                assert response.json()["outputs"][0]["data"][0] == 2.0 * value
                finished.append(tag)

            lows = [asyncio.create_task(one(f"low{i}", float(i))) for i in range(3)]
            while batcher.depth < 3:
                await asyncio.sleep(0.002)
            high = asyncio.create_task(one("high", 9.0, priority=1))
            await asyncio.gather(*lows, high)

    asyncio.run(run())
    assert blocker.result().status_code == 200
    assert finished[0] == "high", finished
    assert sorted(finished[1:]) == ["low0", "low1", "low2"]


def test_grpc_timeout_is_deadline_exceeded_with_tritonclient(
    server: RunningServer, pool: ThreadPoolExecutor
) -> None:
    runs = executions(server)
    with grpc_client(server) as client:
        blocker = start_blocker(server, pool)
        with pytest.raises(InferenceServerException) as info:
            client.infer("slow", [grpc_input(1.0)], timeout=10_000)
        assert not blocker.done()
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert "never ran" in info.value.message()
        with pytest.raises(InferenceServerException) as bad:
            client.infer("slow", [grpc_input(1.0)], priority=3)
        assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "levels 1 (highest) to 2" in bad.value.message()
        assert blocker.result().status_code == 200
    assert executions(server) == runs + 1


def test_a_grpc_call_past_its_own_deadline_leaves_the_queue_unrun(
    server: RunningServer, pool: ThreadPoolExecutor
) -> None:
    runs, before = executions(server), drops(server, "disconnected")
    batcher = batcher_of(server)
    with grpc_client(server) as client:
        blocker = start_blocker(server, pool)
        with pytest.raises(InferenceServerException) as info:
            client.infer("slow", [grpc_input(1.0)], client_timeout=0.05)  # the gRPC deadline
        assert "DEADLINE" in str(info.value).upper()
        wait_for(lambda: batcher.depth == 0, "the cancelled call to leave the queue")
        assert not blocker.done()
        assert blocker.result().status_code == 200
    wait_for(lambda: batcher.in_flight == 0, "the blocker to finish")
    assert executions(server) == runs + 1
    assert drops(server, "disconnected") - before == 1


def test_a_client_that_disconnects_while_queued_is_dropped_unrun(
    server: RunningServer, pool: ThreadPoolExecutor
) -> None:
    batcher = batcher_of(server)
    runs = executions(server)
    before = drops(server, "disconnected")
    blocker = start_blocker(server, pool)
    payload = httpx.Request("POST", f"{server.url}/v2/models/slow/infer", json=body(1.0))
    head = (
        f"POST /v2/models/slow/infer HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"content-type: application/json\r\ncontent-length: {len(payload.content)}\r\n\r\n"
    )
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(head.encode("ascii") + payload.content)
        wait_for(lambda: batcher.depth == 1, "the request to queue")
    assert blocker.result().status_code == 200
    wait_for(lambda: batcher.depth == 0 and batcher.in_flight == 0, "the queue to empty")
    assert executions(server) == runs + 1
    assert drops(server, "disconnected") - before == 1
