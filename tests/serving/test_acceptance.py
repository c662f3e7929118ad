"""Acceptance: a real server on a free port, checked against `shipyard.load(...).infer()`.

1. tritonclient.http (JSON and binary) and TF Serving REST (instances and inputs) on an
   sklearn iris classifier and a tiny ONNX graph give what the package gives locally.
2. Hot reload under continuous traffic: add version 2, remove it, drop in a corrupt
   version 3; every response is 200 and matches the version that answered it.
3. Dynamic batching under 32 concurrent clients forms batches > 1 (Prometheus histogram)
   and every client gets exactly its own rows back, across V2 and TF Serving requests.
4. Overload: a slow model with a small queue refuses the excess fast with 503 +
   Retry-After, serves the admitted requests correctly, and stays live throughout.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

import shipyard
from shipyard.serving.server import RunningServer, start_in_thread
from shipyard.serving.settings import ServerSettings, load_settings

# -- models -------------------------------------------------------------------------------


def _onnx(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def scale_graph(factor: float) -> onnx.ModelProto:
    """x: float32[?, 4] -> y = x * factor, s = sum(x, axis 1): the factor tells versions apart."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [None])
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [factor])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["y"]),
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
    ]
    return _onnx(helper.make_graph(nodes, "scale", [x], [y, s], initializer=[k, axes]))


SLOW_DIM = 512


def slow_graph(matmuls: int) -> onnx.ModelProto:
    """x: float32[?, 4] -> y = 2x, after `matmuls` input-dependent 512x512 MatMuls.

    The chain starts from sum(x) * I, so ONNX Runtime cannot fold it into a constant; its
    (zero-weighted) sum feeds y, so it cannot be pruned either. Cost does not depend on rows.
    """
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    inits = [
        numpy_helper.from_array(np.eye(SLOW_DIM, dtype=np.float32), "eye"),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["m"], keepdims=0),
        helper.make_node("Mul", ["eye", "m"], ["h0"]),
    ]
    nodes += [helper.make_node("MatMul", [f"h{i}", "eye"], [f"h{i + 1}"]) for i in range(matmuls)]
    nodes += [
        helper.make_node("ReduceSum", [f"h{matmuls}"], ["t"], keepdims=0),
        helper.make_node("Mul", ["t", "zero"], ["t0"]),
        helper.make_node("Mul", ["x", "two"], ["x2"]),
        helper.make_node("Add", ["x2", "t0"], ["y"]),
    ]
    return _onnx(helper.make_graph(nodes, "slow", [x], [y], initializer=inits))


def calibrated_slow_graph(target_s: float) -> onnx.ModelProto:
    """A slow graph taking about `target_s` per run on one thread of this machine."""
    probe = 16
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        slow_graph(probe).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feed = {"x": np.ones((1, 4), np.float32)}
    session.run(None, feed)
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        session.run(None, feed)
        runs.append(time.perf_counter() - started)
    per_matmul = min(runs) / probe
    return slow_graph(int(min(max(target_s / per_matmul, probe), 4000)))


def write_model_toml(model_dir: Path, text: str) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "model.toml").write_text(text, encoding="utf-8")


# -- helpers ------------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def v2_json(name: str, x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [{"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}]
    }


def v2_outputs(doc: dict[str, Any]) -> dict[str, np.ndarray]:
    return {o["name"]: np.reshape(o["data"], o["shape"]) for o in doc["outputs"]}


def batch_size_histogram(metrics_text: str, model: str) -> dict[str, float]:
    """{"le=1": .., "count": .., "sum": ..} of shipyard_batch_size for `model` (all versions)."""
    found = {"le=1": 0.0, "count": 0.0, "sum": 0.0}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "shipyard_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name.endswith("_bucket") and float(sample.labels["le"]) == 1.0:
                found["le=1"] += sample.value
            elif sample.name.endswith("_count"):
                found["count"] += sample.value
            elif sample.name.endswith("_sum"):
                found["sum"] += sample.value
    return found


def request_count(metrics_text: str, model: str, outcome: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "shipyard_requests":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "shipyard_requests_total"
                and labels.get("model") == model
                and labels.get("outcome") == outcome
            ):
                total += sample.value
    return total


# -- 1. integration: tritonclient and TF Serving REST against local inference -------------


@dataclass
class Integration:
    server: RunningServer
    iris: shipyard.Model
    scale: shipyard.Model
    iris_x: np.ndarray


@pytest.fixture(scope="module")
def integration(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Integration]:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    repo = tmp_path_factory.mktemp("acceptance-models")
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    estimator = LogisticRegression(max_iter=500).fit(x, y)
    iris_dir = shipyard.pack(estimator, name="iris", repo=repo, sample_input=x[:8]).path
    scale_dir = shipyard.pack(scale_graph(2.0), name="scale", repo=repo).path
    iris, scale = shipyard.load(iris_dir), shipyard.load(scale_dir)
    settings = load_settings(repository=repo, port=0, poll_interval_s=0)
    try:
        with start_in_thread(settings=settings) as running:
            yield Integration(running, iris, scale, x)
        assert not running.running
    finally:
        iris.close()
        scale.close()


def assert_outputs_match(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Same names and shapes; integers exact, floats to float32 rounding."""
    assert set(got) == set(want)
    for name, expected in want.items():
        actual = np.asarray(got[name])
        assert actual.shape == expected.shape, name
        if expected.dtype.kind in "iub":
            np.testing.assert_array_equal(actual, expected, err_msg=name)
        else:
            np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("model", ["iris", "scale"])
def test_tritonclient_results_equal_local_inference(
    integration: Integration, model: str, binary: bool
) -> None:
    local = integration.iris if model == "iris" else integration.scale
    rows = integration.iris_x[::9] if model == "iris" else np.arange(28, dtype=np.float32)
    rows = rows.reshape(-1, 4) * (1 if model == "iris" else 0.25)
    expected = local.infer(rows)
    client = triton.InferenceServerClient(
        f"{integration.server.host}:{integration.server.port}",
        connection_timeout=10,
        network_timeout=10,
    )
    try:
        tensor = triton.InferInput(local.inputs[0].name, list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        requested = [triton.InferRequestedOutput(n, binary_data=binary) for n in expected]
        result = client.infer(model, [tensor], outputs=requested, request_id=f"{model}-{binary}")
        response = result.get_response()
        assert response["model_name"] == model and response["model_version"] == "1"
        assert response["id"] == f"{model}-{binary}"
        binary_outputs = [
            "binary_data_size" in o.get("parameters", {}) for o in response["outputs"]
        ]
        assert binary_outputs == [binary] * len(expected)
        got = {n: result.as_numpy(n) for n in expected}
        assert_outputs_match(got, expected)
        # the same rows one at a time give the same rows (no batch-size dependence)
        single = triton.InferInput(local.inputs[0].name, [1, 4], "FP32")
        single.set_data_from_numpy(rows[-1:], binary_data=binary)
        last = client.infer(model, [single], outputs=requested)
        assert_outputs_match({n: last.as_numpy(n) for n in expected}, local.infer(rows[-1:]))
    finally:
        client.close()


@pytest.mark.parametrize("model", ["iris", "scale"])
def test_tf_serving_predict_equals_local_inference(integration: Integration, model: str) -> None:
    local = integration.iris if model == "iris" else integration.scale
    rows = integration.iris_x[1::11] if model == "iris" else np.arange(20, dtype=np.float32)
    rows = rows.reshape(-1, 4) * (1 if model == "iris" else -0.5)
    expected = local.infer(rows)
    input_name = local.inputs[0].name
    with httpx.Client(base_url=integration.server.url, timeout=10) as http:
        row_format = http.post(f"/v1/models/{model}:predict", json={"instances": rows.tolist()})
        assert row_format.status_code == 200, row_format.text
        predictions = row_format.json()["predictions"]
        assert len(predictions) == len(rows)
        by_row = {n: np.array([p[n] for p in predictions]) for n in expected}
        assert_outputs_match(by_row, expected)

        named = http.post(
            f"/v1/models/{model}/versions/1:predict",
            json={"instances": [{input_name: r} for r in rows.tolist()]},
        )
        assert named.status_code == 200 and named.json() == row_format.json()

        columnar = http.post(f"/v1/models/{model}:predict", json={"inputs": rows.tolist()})
        assert columnar.status_code == 200, columnar.text
        outputs = columnar.json()["outputs"]
        assert_outputs_match({n: np.array(v) for n, v in outputs.items()}, expected)
        by_name = http.post(
            f"/v1/models/{model}:predict", json={"inputs": {input_name: rows.tolist()}}
        )
        assert by_name.status_code == 200 and by_name.json() == columnar.json()


# -- 2. hot reload under continuous requests ----------------------------------------------

FACTORS = {"1": 2.0, "2": 3.0, "3": 5.0}
"""Version -> the factor it multiplies by: every response names the version that answered."""


@dataclass
class Answer:
    sent: float
    version: str
    factor: float


class Hammer:
    """Client threads sending requests non-stop; any failure or wrong answer is recorded."""

    def __init__(self, server: RunningServer, threads: int) -> None:
        self.server = server
        self.stop = threading.Event()
        self.answers: list[list[Answer]] = [[] for _ in range(threads)]
        self.failures: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(i,), name=f"hammer-{i}")
            for i in range(threads)
        ]

    def __enter__(self) -> Hammer:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)
        assert not any(t.is_alive() for t in self.threads)

    def last_versions(self) -> set[str]:
        """The version each thread heard from last (empty until every thread has answers)."""
        if not all(self.answers):
            return set()
        return {answers[-1].version for answers in self.answers}

    def count(self) -> int:
        return sum(len(a) for a in self.answers)

    def _run(self, index: int) -> None:
        # even threads speak V2 JSON over httpx, odd ones binary over tritonclient
        x = (np.arange(4, dtype=np.float32) + 10 * index).reshape(1, 4)
        http = httpx.Client(base_url=self.server.url, timeout=10)
        client = triton.InferenceServerClient(
            f"{self.server.host}:{self.server.port}", connection_timeout=10, network_timeout=10
        )
        tensor = triton.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        try:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    if index % 2 == 0:
                        response = http.post("/v2/models/scale/infer", json=v2_json("x", x))
                        if response.status_code != 200:
                            self.failures.append(f"{response.status_code}: {response.text}")
                            continue
                        doc = response.json()
                        version, y = doc["model_version"], v2_outputs(doc)["y"]
                    else:
                        result = client.infer("scale", [tensor])
                        version = result.get_response()["model_version"]
                        y = result.as_numpy("y")
                except Exception as exc:  # any failure fails the test
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                factor = FACTORS.get(version)
                if factor is None or not np.array_equal(y, x * factor):
                    self.failures.append(f"version {version} answered {y} for {x}")
                self.answers[index].append(Answer(sent, version, factor or 0.0))
        finally:
            http.close()
            client.close()


def test_hot_reload_under_load_add_remove_and_refuse_a_corrupt_version(
    repo: Path, tmp_path: Path, settings_for: Callable[..., ServerSettings]
) -> None:
    shipyard.pack(scale_graph(FACTORS["1"]), name="scale", repo=repo)
    model_dir = repo / "scale"
    settings = settings_for(repo, poll_interval_s=0.05)
    with start_in_thread(settings=settings) as running, Hammer(running, threads=4) as hammer:
        http = httpx.Client(base_url=running.url, timeout=10)
        try:
            wait_for(lambda: hammer.last_versions() == {"1"}, "every client to hear version 1")

            # add version 2 (pack writes a hidden temp folder and renames it into place)
            shipyard.pack(scale_graph(FACTORS["2"]), name="scale", repo=repo)
            wait_for(lambda: hammer.last_versions() == {"2"}, "every client to hear version 2")
            v2_everywhere = time.monotonic()
            before = hammer.count()
            wait_for(lambda: hammer.count() > before + 20, "requests on version 2")

            # remove version 2's folder: version 1 comes back
            removed = time.monotonic()
            shutil.rmtree(model_dir / "2")
            wait_for(lambda: hammer.last_versions() == {"1"}, "every client to hear version 1")
            v1_everywhere = time.monotonic()
            assert http.get("/v2/models/scale/versions/2/ready").status_code != 200

            # drop in a corrupt version 3, atomically: copy to a hidden temp dir, then rename
            elsewhere = shipyard.pack(
                scale_graph(FACTORS["3"]), name="scale", repo=tmp_path / "elsewhere", version=3
            ).path
            staging = model_dir / ".tmp-v3"
            shutil.copytree(elsewhere, staging)
            onnx_file = staging / "model.onnx"
            data = bytearray(onnx_file.read_bytes())
            data[len(data) // 2] ^= 0xFF
            onnx_file.write_bytes(bytes(data))
            os.rename(staging, model_dir / "3")

            def refused() -> bool:
                rows = http.post("/v2/repository/index", json={}).json()
                row = next((r for r in rows if r.get("version") == "3"), None)
                return bool(row and row["state"] == "UNAVAILABLE" and row["reason"])

            wait_for(refused, "version 3 to be refused")
            rows = {r["version"]: r for r in http.post("/v2/repository/index", json={}).json()}
            assert "sha256" in rows["3"]["reason"], rows["3"]
            assert rows["1"]["state"] == "READY"
            before = hammer.count()
            wait_for(lambda: hammer.count() > before + 20, "requests after the refusal")
            assert http.get("/v2/models/scale/versions/1/ready").status_code == 200
            assert http.get("/v2/models/scale/versions/3/ready").status_code != 200
            assert http.get("/v2/health/ready").status_code == 200
        finally:
            http.close()

    assert not running.running
    assert not hammer.failures, hammer.failures[:5]
    answers = [a for per_thread in hammer.answers for a in per_thread]
    assert {a.version for a in answers} == {"1", "2"}  # the corrupt version never answered
    # once every client heard the new version, nobody heard the old one in that phase
    phase_v2 = [a.version for a in answers if v2_everywhere < a.sent < removed]
    assert phase_v2 and set(phase_v2) == {"2"}
    phase_v1 = [a.version for a in answers if a.sent > v1_everywhere]
    assert phase_v1 and set(phase_v1) == {"1"}


# -- 3. dynamic batching under concurrent load --------------------------------------------


def test_concurrent_clients_are_batched_and_each_gets_its_own_rows(
    repo: Path, settings_for: Callable[..., ServerSettings]
) -> None:
    path = shipyard.pack(scale_graph(2.0), name="scale", repo=repo).path
    write_model_toml(
        repo / "scale",
        "instances = 1\n[batching]\nmax_batch_size = 16\nmax_queue_delay_us = 2000\n",
    )
    local = shipyard.load(path)
    clients, rounds = 32, 4

    def rows_for(request: int) -> np.ndarray:
        count = 1 + request % 3  # 1-3 rows, values unique to this request
        return (np.arange(count * 4, dtype=np.float32).reshape(count, 4) + 100 * request) / 8

    async def one(http: httpx.AsyncClient, request: int) -> tuple[int, dict[str, np.ndarray]]:
        x = rows_for(request)
        if request % 2:  # V2 and TF Serving requests share the model's batches
            response = await http.post("/v1/models/scale:predict", json={"inputs": x.tolist()})
            assert response.status_code == 200, response.text
            outputs = response.json()["outputs"]
            return request, {n: np.array(v, np.float32) for n, v in outputs.items()}
        response = await http.post("/v2/models/scale/infer", json=v2_json("x", x))
        assert response.status_code == 200, response.text
        return request, v2_outputs(response.json())

    async def burst(url: str) -> list[tuple[int, dict[str, np.ndarray]]]:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=20, limits=limits) as http:
            results = []
            for r in range(rounds):
                batch = range(r * clients, (r + 1) * clients)
                results += await asyncio.gather(*(one(http, i) for i in batch))
            return results

    try:
        with start_in_thread(settings=settings_for(repo)) as running:
            results = asyncio.run(burst(running.url))
            metrics = httpx.get(f"{running.url}/metrics", timeout=10).text
        assert not running.running
        assert len(results) == clients * rounds
        for request, outputs in results:
            assert_outputs_match(outputs, local.infer(rows_for(request)))
    finally:
        local.close()

    histogram = batch_size_histogram(metrics, "scale")
    total_rows = sum(len(rows_for(i)) for i in range(clients * rounds))
    assert histogram["sum"] == total_rows  # every row ran exactly once
    assert histogram["count"] > histogram["le=1"], histogram  # some batches held > 1 row
    assert histogram["count"] < clients * rounds, histogram  # fewer batches than requests
    assert request_count(metrics, "scale", "success") == clients * rounds


# -- 4. overload: fast 503 + Retry-After, admitted requests correct, still live -----------


def test_overload_refuses_the_excess_fast_and_stays_live(
    repo: Path, settings_for: Callable[..., ServerSettings]
) -> None:
    queue = 4
    burst_size = 4 * queue
    path = shipyard.pack(calibrated_slow_graph(0.25), name="slow", repo=repo).path
    write_model_toml(
        repo / "slow",
        f"instances = 1\n[batching]\nmax_batch_size = 1\nmax_queue_size = {queue}\n"
        "[runtime]\nintra_op_threads = 1\n",
    )
    inputs = [np.arange(4, dtype=np.float32).reshape(1, 4) + i for i in range(burst_size)]
    local = shipyard.load(path)
    try:
        expected = local.infer(np.concatenate(inputs))["y"]  # one run: cost is per batch
    finally:
        local.close()

    live: list[tuple[int, float]] = []
    burst_done = threading.Event()

    def poll_live(url: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            while not burst_done.is_set():
                started = time.perf_counter()
                try:
                    code = http.get("/v2/health/live").status_code
                except httpx.HTTPError:
                    code = -1
                live.append((code, time.perf_counter() - started))
                time.sleep(0.005)

    async def burst(url: str) -> list[tuple[int, httpx.Response, float]]:
        limits = httpx.Limits(max_connections=burst_size, max_keepalive_connections=burst_size)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
            # open every connection first so the burst measures the server, not connecting
            await asyncio.gather(*(http.get("/v2/health/live") for _ in range(burst_size)))
            began = time.perf_counter()

            async def one(i: int) -> tuple[int, httpx.Response, float]:
                response = await http.post("/v2/models/slow/infer", json=v2_json("x", inputs[i]))
                return i, response, time.perf_counter() - began  # answered this long after

            return await asyncio.gather(*(one(i) for i in range(burst_size)))

    with start_in_thread(settings=settings_for(repo)) as running:
        poller = threading.Thread(target=poll_live, args=(running.url,), name="live-poller")
        poller.start()
        try:
            wait_for(lambda: len(live) >= 2, "liveness polls")
            polls_before = len(live)
            results = asyncio.run(burst(running.url))
            polls_during = len(live) - polls_before
        finally:
            burst_done.set()
            poller.join(15)
        assert not poller.is_alive()
        with httpx.Client(base_url=running.url, timeout=10) as http:
            metrics = http.get("/metrics").text
            stats = http.get("/v2/models/slow/stats").json()["model_stats"][0]
    assert not running.running

    admitted = [(i, r, t) for i, r, t in results if r.status_code == 200]
    refused = [(i, r, t) for i, r, t in results if r.status_code == 503]
    assert len(admitted) + len(refused) == burst_size, [r.status_code for _, r, _ in results]
    assert len(admitted) >= queue, len(admitted)  # at least the queue's worth got in
    assert len(refused) >= 2 * queue, len(refused)  # and the excess was refused
    for i, response, _ in admitted:
        doc = response.json()
        assert doc["model_version"] == "1"
        np.testing.assert_array_equal(v2_outputs(doc)["y"], expected[i : i + 1])
    for _, response, _ in refused:
        assert response.headers["retry-after"] == "1"
        assert "overloaded" in response.json()["error"]

    # refusals do not wait for the model: every one came back before the first admitted
    # request finished its run
    first_admitted = min(t for _, _, t in admitted)
    assert max(t for _, _, t in refused) < first_admitted
    # the admitted ones ran alone, one per batch, and refused ones never reached the model
    histogram = batch_size_histogram(metrics, "slow")
    assert histogram["count"] == histogram["sum"] == histogram["le=1"] == len(admitted)
    # measured by the server under the same load: a refusal (received -> 503) takes a small
    # fraction of one model run
    run_ns = stats["inference_stats"]["compute_infer"]["ns"] / len(admitted)
    assert run_ns > 30e6, f"the slow model ran in {run_ns / 1e6:.1f} ms"
    fail = stats["inference_stats"]["fail"]
    assert fail["count"] == len(refused)
    assert fail["ns"] / fail["count"] < run_ns / 5, (fail, run_ns)
    assert request_count(metrics, "slow", "overloaded") == len(refused)
    assert request_count(metrics, "slow", "success") == len(admitted)

    # liveness answered 200 throughout the burst, promptly
    assert polls_during >= 3, polls_during
    assert all(code == 200 for code, _ in live), live
    assert max(t for _, t in live) < 1.0, max(t for _, t in live)
