"""A real uvicorn server on a free port, driven by the unmodified tritonclient.http client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tests.serving.conftest import GRAPHS
from tritonclient.utils import InferenceServerException

import shipyard
from shipyard.errors import ShipyardError
from shipyard.package.dtypes import DTYPES
from shipyard.serving.server import RunningServer, start_in_thread
from shipyard.serving.settings import ServerSettings, load_settings

IDENTITY_TYPES = [d.v2 for d in DTYPES]  # every V2 datatype ONNX has


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the tests that only read; a test that loads, unloads or counts
    requests starts its own (`own_client`)."""
    repo = tmp_path_factory.mktemp("e2e") / "models"
    for kind in ("scale", "identity"):
        shipyard.pack(GRAPHS[kind](), name=kind, repo=repo)
    with start_in_thread(settings=load_settings(repository=repo, port=0, poll_interval_s=0)) as r:
        yield r
    assert not r.running


def _client(server: RunningServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(
        f"{server.host}:{server.port}", connection_timeout=10, network_timeout=10
    )


@pytest.fixture
def client(server: RunningServer) -> Iterator[triton.InferenceServerClient]:
    client = _client(server)
    yield client
    client.close()


@pytest.fixture
def own_client(
    repo: Path, pack: Callable[..., Path], settings_for: Callable[..., ServerSettings]
) -> Iterator[triton.InferenceServerClient]:
    """A client of a server of this test's own, for a test that changes what it serves."""
    pack()
    pack("identity")
    with start_in_thread(settings=settings_for(repo)) as running:
        client = _client(running)
        yield client
        client.close()
    assert not running.running


def test_server_port_is_real(server: RunningServer) -> None:
    assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"


def test_health_and_metadata_calls(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("scale")
    assert client.is_model_ready("scale", "1")
    assert not client.is_model_ready("scale", "2")
    assert not client.is_model_ready("nope")
    metadata = client.get_server_metadata()
    assert metadata["name"] == "shipyard" and "binary_tensor_data" in metadata["extensions"]
    model = client.get_model_metadata("scale")
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert client.get_model_metadata("scale", "1")["versions"] == ["1"]
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "404" and "nope" in info.value.message()


@pytest.mark.parametrize("binary_in", [True, False], ids=["bin-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["bin-out", "json-out"])
def test_infer_every_datatype(
    client: triton.InferenceServerClient,
    sample_for: Callable[..., np.ndarray],
    binary_in: bool,
    binary_out: bool,
) -> None:
    inputs, expected = [], {}
    for datatype in IDENTITY_TYPES:
        value = sample_for(datatype)
        tensor = triton.InferInput(f"in_{datatype}", list(value.shape), datatype)
        tensor.set_data_from_numpy(value, binary_data=binary_in)
        inputs.append(tensor)
        expected[f"out_{datatype}"] = value
    outputs = [triton.InferRequestedOutput(name, binary_data=binary_out) for name in expected]
    result = client.infer("identity", inputs, outputs=outputs, request_id="e2e")
    assert result.get_response()["id"] == "e2e"
    for name, value in expected.items():
        got = result.as_numpy(name)
        if value.dtype == object:
            got = [v.decode() if isinstance(v, bytes) else v for v in got.reshape(-1)]
            assert got == value.reshape(-1).tolist()
        else:
            np.testing.assert_array_equal(got, value)


def test_default_infer_returns_every_output_binary(client: triton.InferenceServerClient) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensor = triton.InferInput("x", [3, 4], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("scale", [tensor])
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    np.testing.assert_array_equal(result.as_numpy("s"), x.sum(axis=1))
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    compressed = client.infer(
        "scale",
        [tensor],
        model_version="1",
        request_compression_algorithm="gzip",
        response_compression_algorithm="deflate",
    )
    np.testing.assert_array_equal(compressed.as_numpy("y"), x * 2)


def test_bad_requests_raise_with_the_servers_message(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("x", [2, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, 3), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("scale", [tensor])
    assert info.value.status() == "400" and "shape" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", [tensor])
    assert info.value.status() == "404"


def test_repository_calls_and_statistics(own_client: triton.InferenceServerClient) -> None:
    client = own_client
    index = client.get_model_repository_index()
    assert {(r["name"], r["state"]) for r in index} == {("scale", "READY"), ("identity", "READY")}
    client.unload_model("identity")
    assert not client.is_model_ready("identity")
    states = {r["name"]: r["state"] for r in client.get_model_repository_index()}
    assert states["identity"] == "UNAVAILABLE"
    client.load_model("identity")
    assert client.is_model_ready("identity")
    with pytest.raises(InferenceServerException):
        client.load_model("nope")

    tensor = triton.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    for _ in range(2):
        client.infer("scale", [tensor])
    stats = client.get_inference_statistics("scale")["model_stats"]
    assert stats[0]["inference_stats"]["success"]["count"] == 2
    assert client.get_inference_statistics("scale", "1")["model_stats"][0]["version"] == "1"
    everything = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} == {"scale", "identity"}


@pytest.mark.slow
def test_sklearn_iris_classifier(repo: Path, settings_for: Callable[..., ServerSettings]) -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    import shipyard

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    estimator = LogisticRegression(max_iter=500).fit(x, y)
    shipyard.pack(estimator, name="iris", repo=repo, sample_input=x[:8])
    with start_in_thread(settings=settings_for(repo)) as running:
        client = triton.InferenceServerClient(f"{running.host}:{running.port}")
        try:
            metadata = client.get_model_metadata("iris")
            rows = x[::7][:20]
            tensor = triton.InferInput(metadata["inputs"][0]["name"], list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows)
            result = client.infer("iris", [tensor])
            outputs = {o["name"]: result.as_numpy(o["name"]) for o in metadata["outputs"]}
            np.testing.assert_array_equal(outputs["label"], estimator.predict(rows))
            np.testing.assert_allclose(
                outputs["probabilities"], estimator.predict_proba(rows), rtol=1e-4, atol=1e-5
            )
        finally:
            client.close()


def test_hot_reload_under_load_with_zero_failures(
    repo: Path,
    tmp_path: Path,
    pack: Callable[..., Path],
    corrupt_copy: Callable[[Path, Path], None],
    settings_for: Callable[..., ServerSettings],
) -> None:
    pack(factor=2.0)
    settings = settings_for(repo, poll_interval_s=0.05)
    with start_in_thread(settings=settings) as running:
        stop = threading.Event()
        seen: list[tuple[str, float]] = []
        failures: list[BaseException] = []

        def hammer() -> None:
            client = triton.InferenceServerClient(f"{running.host}:{running.port}")
            tensor = triton.InferInput("x", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
            try:
                while not stop.is_set():
                    try:
                        result = client.infer("scale", [tensor])
                        seen.append(
                            (
                                result.get_response()["model_version"],
                                float(result.as_numpy("y")[0, 0]),
                            )
                        )
                    except BaseException as exc:  # any failure fails the test
                        failures.append(exc)
            finally:
                client.close()

        workers = [threading.Thread(target=hammer) for _ in range(3)]
        for worker in workers:
            worker.start()
        try:
            wait_for(lambda: len(seen) > 20, "requests to flow")
            pack(factor=3.0)  # version 2, renamed into place atomically by pack
            wait_for(lambda: bool(seen) and seen[-1][0] == "2", "version 2 to serve")
            broken = pack(factor=5.0, version=3, into=tmp_path / "elsewhere")
            corrupt_copy(broken, repo / "scale" / "3")
            client = triton.InferenceServerClient(f"{running.host}:{running.port}")
            try:

                def refused() -> bool:
                    rows = {r.get("version"): r for r in client.get_model_repository_index()}
                    return (
                        rows.get("3", {}).get("state") == "UNAVAILABLE"
                        and "sha256" in rows["3"]["reason"]
                    )

                wait_for(refused, "version 3 to be refused")
                count = len(seen)
                wait_for(lambda: len(seen) > count + 20, "requests after the refusal")
                assert client.is_model_ready("scale", "2")
            finally:
                client.close()
        finally:
            stop.set()
            for worker in workers:
                worker.join(10)
        assert not failures, failures[:3]
        versions = [v for v, _ in seen]
        assert versions[-1] == "2" and "1" in versions
        assert {(v, y) for v, y in seen} == {("1", 2.0), ("2", 3.0)}
        first_v2 = versions.index("2")
        # swapped once per client: after a thread sees version 2 it never sees 1 again
        assert versions[first_v2:].count("1") <= len(workers)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_servers_stop_and_a_busy_port_is_reported(
    repo: Path, pack: Callable[..., Path], settings_for: Callable[..., ServerSettings]
) -> None:
    pack()
    before = set(threading.enumerate())  # the module's shared server keeps running
    with start_in_thread(settings=settings_for(repo)) as first:
        busy = settings_for(repo, port=first.port)
        with pytest.raises(ShipyardError, match=f"port {first.port} on 127.0.0.1 is in use"):
            start_in_thread(settings=busy, timeout_s=10)
    assert not first.running
    leftovers = [
        t.name for t in threading.enumerate() if t.name.startswith("shipyard-") and t not in before
    ]
    assert leftovers == []
