"""A live server over one tiny packed model, scraped after a few good and bad requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import onnx
import pytest
from onnx import TensorProto, helper
from prometheus_client.parser import text_string_to_metric_families

import shipyard
from shipyard.serving.server import start_in_thread
from shipyard.serving.settings import load_settings


def _double() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "g", [x], [y], [k])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="session")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """{family or series name: type} from a live server's /metrics after real traffic."""
    repo = tmp_path_factory.mktemp("monitoring") / "models"
    repo.mkdir()
    shipyard.pack(_double(), name="double", repo=repo)
    settings = load_settings(repository=repo, port=0, poll_interval_s=0, grpc_port=None)
    with start_in_thread(settings=settings, timeout_s=60) as server:
        text = _traffic_and_scrape(server.url)
    assert server.running is False
    families: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            families.setdefault(sample.name, "sample")
    return families


def _traffic_and_scrape(url: str) -> str:
    good = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1.0] * 8}]}
    bad = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1.0] * 6}]}
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(3):
            assert client.post("/v2/models/double/infer", json=good).status_code == 200
        assert client.post("/v2/models/double/infer", json=bad).status_code == 400
        assert client.post("/v2/models/nosuch/infer", json=good).status_code == 404
        response = client.get("/metrics")
        response.raise_for_status()
        return response.text


@pytest.fixture
def source_tree() -> Iterator[Path]:
    yield Path(shipyard.__file__).parent
