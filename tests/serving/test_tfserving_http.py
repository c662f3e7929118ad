"""TF Serving REST on the Shipyard server: status, metadata, predict, classify, regress, errors.

In process (httpx over ASGI) for every path and error, plus one real server on a free port.
Models: the iris classifier (feature_names + classes metadata), a LinearRegression with no
feature_names, a two-input graph, a string Identity graph and conftest's `scale`.
"""

from __future__ import annotations

import base64
import gzip
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from sklearn.linear_model import LinearRegression

import shipyard
from shipyard.codecs import tfserving
from shipyard.codecs.errors import ProtocolError
from shipyard.codecs.types import InferenceRequest
from shipyard.demo.tabular import train_iris
from shipyard.package.tensorspec import TensorSpec
from shipyard.serving.routing import TABLE
from shipyard.serving.server import start_in_thread
from shipyard.serving.settings import ServerSettings

pytestmark = pytest.mark.anyio

IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
CLASSES = ["setosa", "versicolor", "virginica"]


def _onnx(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def pair_graph() -> onnx.ModelProto:
    """a: float32[?, 2], b: int64[?] -> doubled = a + a, b_out = b."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 2])
    b = helper.make_tensor_value_info("b", TensorProto.INT64, [None])
    doubled = helper.make_tensor_value_info("doubled", TensorProto.FLOAT, [None, 2])
    b_out = helper.make_tensor_value_info("b_out", TensorProto.INT64, [None])
    nodes = [
        helper.make_node("Add", ["a", "a"], ["doubled"]),
        helper.make_node("Identity", ["b"], ["b_out"]),
    ]
    return _onnx(helper.make_graph(nodes, "pair", [a, b], [doubled, b_out]))


def strings_graph() -> onnx.ModelProto:
    """text: string[?] -> echo (text out) and echo_bytes (b64 out, by its name)."""
    text = helper.make_tensor_value_info("text", TensorProto.STRING, [None])
    outs = [
        helper.make_tensor_value_info(n, TensorProto.STRING, [None]) for n in ("echo", "echo_bytes")
    ]
    nodes = [helper.make_node("Identity", ["text"], [o.name]) for o in outs]
    return _onnx(helper.make_graph(nodes, "strings", [text], outs))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every model packed once; tests copy the folder."""
    root = tmp_path_factory.mktemp("tf-models")
    iris = train_iris()
    shipyard.pack(
        iris.model,
        name="iris",
        repo=root,
        sample_input=iris.x_test[:16].astype(np.float32),
        metadata=iris.metadata(),
    )
    x = iris.x_train
    regressor = LinearRegression().fit(x[:, :3], x[:, 3])
    shipyard.pack(regressor, name="petal", repo=root, sample_input=x[:16, :3].astype(np.float32))
    shipyard.pack(pair_graph(), name="pair", repo=root)
    shipyard.pack(strings_graph(), name="strings", repo=root)
    return root


@pytest.fixture
def models(repo: Path, template: Path, pack: Callable[..., Path]) -> Path:
    shutil.copytree(template, repo, dirs_exist_ok=True)
    pack()  # scale: one input, two outputs, not a classifier or regressor
    return repo


@pytest.fixture
def client(
    models: Path, settings_for: Callable[..., ServerSettings], app_client: Callable[..., Any]
) -> Callable[..., Any]:
    return lambda **overrides: app_client(settings_for(models, **overrides))


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def assert_same_result(got: list[Any], want: list[Any]) -> None:
    """Classify results agree on labels; scores differ in the last bits by batch size."""
    assert [[label for label, _ in r] for r in got] == [[label for label, _ in r] for r in want]
    np.testing.assert_allclose(
        [[s for _, s in r] for r in got], [[s for _, s in r] for r in want], rtol=1e-5, atol=1e-7
    )


# -- status and metadata ------------------------------------------------------------------


async def test_model_status_maps_states(
    client: Callable[..., Any], pack: Callable[..., Path], corrupt_copy: Callable[..., None]
) -> None:
    v2 = pack("scale", version=2)
    corrupt_copy(v2, v2.parent / "3")  # the newest version fails; the server falls back to 2
    async with client() as http:
        status = await http.get("/v1/models/scale")
        assert status.status_code == 200
        rows = status.json()["model_version_status"]
        assert [(r["version"], r["state"], r["status"]["error_code"]) for r in rows] == [
            ("3", "END", "UNKNOWN"),
            ("2", "AVAILABLE", "OK"),
            ("1", "END", "OK"),
        ]
        assert rows[0]["status"]["error_message"]  # why version 3 failed
        assert rows[1]["status"]["error_message"] == ""
        assert "version policy" in rows[2]["status"]["error_message"]
        one = (await http.get("/v1/models/scale/versions/2")).json()
        assert one == {
            "model_version_status": [
                {
                    "version": "2",
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }
        for path in (
            "/v1/models/scale/versions/7",
            "/v1/models/nope",
            "/v1/models/scale/versions/01",
        ):
            response = await http.get(path)
            assert response.status_code == 404 and response.json()["error"], path
        await http.post("/v2/repository/models/iris/unload")
        rows = (await http.get("/v1/models/iris")).json()["model_version_status"]
        assert rows == [
            {
                "version": "1",
                "state": "END",
                "status": {"error_code": "OK", "error_message": "unloaded by request"},
            }
        ]


async def test_metadata_is_a_signature_def(client: Callable[..., Any]) -> None:
    async with client() as http:
        for path in ("/v1/models/iris/metadata", "/v1/models/iris/versions/1/metadata"):
            response = await http.get(path)
            assert response.status_code == 200, response.text
            doc = response.json()
            assert doc["model_spec"] == {"name": "iris", "signature_name": "", "version": "1"}
            signature = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
            assert signature["method_name"] == "tensorflow/serving/predict"
            assert signature["inputs"] == {
                "X": {
                    "dtype": "DT_FLOAT",
                    "tensor_shape": {
                        "dim": [{"size": "-1", "name": ""}, {"size": "4", "name": ""}],
                        "unknown_rank": False,
                    },
                    "name": "X",
                }
            }
            assert signature["outputs"]["label"]["dtype"] == "DT_INT64"
            assert signature["outputs"]["probabilities"]["tensor_shape"]["dim"][1]["size"] == "3"
        strings = (await http.get("/v1/models/strings/metadata")).json()
        inputs = strings["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
        assert inputs["text"]["dtype"] == "DT_STRING"
        assert (await http.get("/v1/models/iris/versions/2/metadata")).status_code == 404
        await http.post("/v2/repository/models/iris/unload")
        response = await http.get("/v1/models/iris/metadata")
        assert response.status_code == 503 and "not ready" in response.json()["error"]


# -- predict ------------------------------------------------------------------------------


async def test_predict_row_and_columnar_on_iris(client: Callable[..., Any]) -> None:
    async with client() as http:
        v2 = await http.post(
            "/v2/models/iris/infer",
            json={
                "inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 4], "data": IRIS_ROWS}]
            },
        )
        expected = {o["name"]: o["data"] for o in v2.json()["outputs"]}
        row = await http.post("/v1/models/iris:predict", json={"instances": IRIS_ROWS})
        assert row.status_code == 200, row.text
        predictions = row.json()["predictions"]
        assert [p["label"] for p in predictions] == expected["label"] == [0, 2]
        np.testing.assert_allclose(
            [p["probabilities"] for p in predictions],
            np.reshape(expected["probabilities"], (2, 3)),
            rtol=1e-6,
        )
        named = await http.post(
            "/v1/models/iris/versions/1:predict",
            json={"signature_name": "serving_default", "instances": [{"X": r} for r in IRIS_ROWS]},
        )
        assert named.json() == row.json()
        columnar = await http.post("/v1/models/iris:predict", json={"inputs": IRIS_ROWS})
        assert columnar.status_code == 200
        assert columnar.json() == {
            "outputs": {
                "label": [0, 2],
                "probabilities": [p["probabilities"] for p in predictions],
            }
        }
        by_name = await http.post("/v1/models/iris:predict", json={"inputs": {"X": IRIS_ROWS}})
        assert by_name.json() == columnar.json()


async def test_predict_single_output_gives_plain_values(client: Callable[..., Any]) -> None:
    async with client() as http:
        rows = [[5.1, 3.5, 1.4], [6.7, 3.0, 5.2]]
        row = (await http.post("/v1/models/petal:predict", json={"instances": rows})).json()
        assert list(row) == ["predictions"] and np.shape(row["predictions"]) == (2, 1)
        columnar = (await http.post("/v1/models/petal:predict", json={"inputs": rows})).json()
        assert columnar == {"outputs": row["predictions"]}


async def test_predict_two_inputs_takes_dtypes_from_the_signature(
    client: Callable[..., Any],
) -> None:
    async with client() as http:
        instances = [{"a": [1, 2.5], "b": 7}, {"a": [0.5, -1], "b": -3}]
        row = await http.post("/v1/models/pair:predict", json={"instances": instances})
        assert row.status_code == 200, row.text
        assert row.json() == {
            "predictions": [
                {"doubled": [2.0, 5.0], "b_out": 7},
                {"doubled": [1.0, -2.0], "b_out": -3},
            ]
        }
        columnar = await http.post(
            "/v1/models/pair:predict", json={"inputs": {"a": [[1, 2.5], [0.5, -1]], "b": [7, -3]}}
        )
        assert columnar.json() == {
            "outputs": {"doubled": [[2.0, 5.0], [1.0, -2.0]], "b_out": [7, -3]}
        }
        for bad in (
            {"instances": [{"a": [1, 2], "b": 1.5}]},  # a float where int64 belongs
            {"instances": [{"a": [1, 2], "b": 2**63}]},  # out of int64 range
            {"instances": [{"a": [1, 2]}]},  # missing input
            {"instances": [{"a": [1, 2], "b": 1, "c": 0}]},  # unknown input
            {"instances": [[1, 2]]},  # a plain value for a two-input model
            {"instances": [{"a": [1, 2], "b": 1}, [1, 2]]},  # mixed forms
            {"inputs": [[1, 2]]},  # columnar plain value for a two-input model
            {"inputs": {"a": [[1, 2]]}},  # columnar missing input
            {"instances": [{"a": ["x", "y"], "b": 1}]},  # strings where numbers belong
            {"instances": [{"a": [True, False], "b": 1}]},  # booleans where floats belong
            {"instances": [{"a": [1, 2, 3], "b": 1}]},  # wrong shape
            {"instances": [{"a": [[1, 2], [3]], "b": 1}]},  # ragged
            {"instances": [{"a": b64(b"xx"), "b": 1}]},  # b64 into a float input
        ):
            response = await http.post("/v1/models/pair:predict", json=bad)
            assert response.status_code == 400, (bad, response.text)
            assert response.json()["error"]


async def test_b64_strings_in_and_out(client: Callable[..., Any]) -> None:
    async with client() as http:
        response = await http.post(
            "/v1/models/strings:predict",
            json={"instances": [b64("héllo".encode()), "plain"]},
        )
        assert response.status_code == 200, response.text
        assert response.json() == {
            "predictions": [
                {"echo": "héllo", "echo_bytes": b64("héllo".encode())},
                {"echo": "plain", "echo_bytes": b64(b"plain")},
            ]
        }
        columnar = await http.post(
            "/v1/models/strings:predict", json={"inputs": {"text": [b64(b"a"), "b"]}}
        )
        assert columnar.json() == {
            "outputs": {"echo": ["a", "b"], "echo_bytes": [b64(b"a"), b64(b"b")]}
        }
        named = await http.post(
            "/v1/models/strings:predict", json={"instances": [{"text": b64(b"z")}]}
        )
        assert named.json()["predictions"] == [{"echo": "z", "echo_bytes": b64(b"z")}]
        for bad in (
            {"instances": [b64(b"\xff\xfe")]},  # not UTF-8: ONNX strings are text
            {"instances": [{"b64": "not base64!"}]},
            {"instances": [{"b64": 5}]},
            {"instances": [3]},  # a number where a string belongs
        ):
            response = await http.post("/v1/models/strings:predict", json=bad)
            assert response.status_code == 400, (bad, response.text)


# -- classify and regress -----------------------------------------------------------------


async def test_classify_iris_with_features_context_and_rows(client: Callable[..., Any]) -> None:
    async with client() as http:
        probabilities = (
            await http.post("/v1/models/iris:predict", json={"inputs": IRIS_ROWS})
        ).json()["outputs"]["probabilities"]
        examples = [dict(zip(FEATURES, row, strict=True)) for row in IRIS_ROWS]
        response = await http.post("/v1/models/iris:classify", json={"examples": examples})
        assert response.status_code == 200, response.text
        result = response.json()["result"]
        assert [[label for label, _ in r] for r in result] == [CLASSES, CLASSES]
        np.testing.assert_allclose([[s for _, s in r] for r in result], probabilities, rtol=1e-6)
        shared = {
            "context": {FEATURES[0]: [5.1]},
            "examples": [{f: [v] for f, v in zip(FEATURES[1:], IRIS_ROWS[0][1:], strict=True)}],
        }
        with_context = (await http.post("/v1/models/iris:classify", json=shared)).json()
        assert_same_result(with_context["result"], result[:1])
        rows = {"examples": [{"x": IRIS_ROWS[0]}, IRIS_ROWS[1], {"X": IRIS_ROWS[1]}]}
        as_rows = (await http.post("/v1/models/iris/versions/1:classify", json=rows)).json()
        assert_same_result(as_rows["result"], [*result, result[1]])


async def test_regress_single_output_regressor(client: Callable[..., Any]) -> None:
    async with client() as http:
        rows = [[5.1, 3.5, 1.4], [6.7, 3.0, 5.2]]
        predicted = (await http.post("/v1/models/petal:predict", json={"inputs": rows})).json()
        response = await http.post(
            "/v1/models/petal:regress", json={"examples": [{"x": rows[0]}, rows[1]]}
        )
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(
            response.json()["result"], np.reshape(predicted["outputs"], -1), rtol=1e-6
        )


CLASSIFY_ERRORS: dict[str, tuple[str, Any]] = {
    "classify a regressor": ("petal:classify", {"examples": [[1, 2, 3]]}),
    "regress a classifier": ("iris:regress", {"examples": [IRIS_ROWS[0]]}),
    "classify a plain graph": ("scale:classify", {"examples": [[1, 2, 3, 4]]}),
    "regress two outputs": ("scale:regress", {"examples": [[1, 2, 3, 4]]}),
    "two inputs": ("pair:regress", {"examples": [[1, 2]]}),
    "string input": ("strings:regress", {"examples": [["a"]]}),
    "no examples": ("iris:classify", {"examples": []}),
    "examples not a list": ("iris:classify", {"examples": {"x": [1, 2, 3, 4]}}),
    "missing examples": ("iris:classify", {"context": {}}),
    "unknown key": ("iris:classify", {"examples": [IRIS_ROWS[0]], "instances": []}),
    "missing feature": (
        "iris:classify",
        {"examples": [dict(zip(FEATURES[:3], IRIS_ROWS[0], strict=False))]},
    ),
    "unknown feature": (
        "iris:classify",
        {"examples": [{**dict(zip(FEATURES, IRIS_ROWS[0], strict=True)), "z": 1}]},
    ),
    "feature in example and context": (
        "iris:classify",
        {"context": {FEATURES[0]: 1}, "examples": [dict(zip(FEATURES, IRIS_ROWS[0], strict=True))]},
    ),
    "context with row examples": (
        "iris:classify",
        {"context": {FEATURES[0]: 1}, "examples": [[1, 2, 3]]},
    ),
    "context not an object": ("iris:classify", {"context": [1], "examples": [IRIS_ROWS[0]]}),
    "feature not a number": (
        "iris:classify",
        {"examples": [dict(zip(FEATURES, ["a", 1, 2, 3], strict=True))]},
    ),
    "feature list of two": (
        "iris:classify",
        {"examples": [dict(zip(FEATURES, [[1, 2], 1, 2, 3], strict=True))]},
    ),
    "row too short": ("iris:classify", {"examples": [[1, 2, 3]]}),
    "rows differ": ("petal:regress", {"examples": [[1, 2, 3], [1, 2]]}),
    "x not a list": ("petal:regress", {"examples": [{"x": 3}]}),
    "features without feature_names": ("petal:regress", {"examples": [{"a": 1, "b": 2, "c": 3}]}),
    "example not an object": ("petal:regress", {"examples": ["abc"]}),
    "bool value": ("petal:regress", {"examples": [[True, 1, 2]]}),
    "wrong signature": ("petal:regress", {"signature_name": "regression", "examples": [[1, 2, 3]]}),
}


@pytest.mark.parametrize("case", list(CLASSIFY_ERRORS), ids=list(CLASSIFY_ERRORS))
async def test_classify_and_regress_errors_are_400(client: Callable[..., Any], case: str) -> None:
    target, body = CLASSIFY_ERRORS[case]
    async with client() as http:
        response = await http.post(f"/v1/models/{target}", json=body)
        assert response.status_code == 400, response.text
        assert isinstance(response.json()["error"], str) and response.json()["error"]


# -- errors -------------------------------------------------------------------------------

ERRORS: dict[str, tuple[str, str, bytes | None, int]] = {
    "not json": ("POST", "iris:predict", b"{nope", 400),
    "not an object": ("POST", "iris:predict", b"[1, 2]", 400),
    "empty body": ("POST", "iris:predict", b"", 400),
    "both formats": (
        "POST",
        "iris:predict",
        b'{"instances": [[1,2,3,4]], "inputs": [[1,2,3,4]]}',
        400,
    ),
    "neither format": ("POST", "iris:predict", b'{"signature_name": ""}', 400),
    "unknown key": ("POST", "iris:predict", b'{"instances": [[1,2,3,4]], "x": 1}', 400),
    "other signature": (
        "POST",
        "iris:predict",
        b'{"signature_name": "predict", "instances": [[1,2,3,4]]}',
        400,
    ),
    "signature not a string": (
        "POST",
        "iris:predict",
        b'{"signature_name": 1, "instances": [[1,2,3,4]]}',
        400,
    ),
    "empty instances": ("POST", "iris:predict", b'{"instances": []}', 400),
    "instances not a list": ("POST", "iris:predict", b'{"instances": 3}', 400),
    "wrong width": ("POST", "iris:predict", b'{"instances": [[1,2,3]]}', 400),
    "scalar input": ("POST", "iris:predict", b'{"inputs": 3}', 400),
    "too deep": ("POST", "iris:predict", b'{"inputs": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}", 400),
    "null value": ("POST", "iris:predict", b'{"inputs": [[null, 1, 2, 3]]}', 400),
    "labels": ("GET", "iris/labels/stable", None, 400),
    "labels predict": ("POST", "iris/labels/stable:predict", b"{}", 400),
    "unknown model": ("POST", "nope:predict", b'{"instances": [1]}', 404),
    "bad model name": ("GET", "-x", None, 404),
    "unknown version": ("POST", "iris/versions/9:predict", b'{"instances": [[1,2,3,4]]}', 404),
    "version not a number": ("GET", "iris/versions/one", None, 404),
    "version zero": ("GET", "iris/versions/0/metadata", None, 404),
    "unknown verb": ("POST", "iris:explain", b"{}", 404),
    "empty verb": ("POST", "iris:", b"{}", 404),
    "empty path": ("GET", "", None, 404),
    "trailing slash": ("GET", "iris/", None, 404),
    "extra segment": ("GET", "iris/versions/1/metadata/x", None, 404),
    "metadata verb": ("POST", "iris/metadata:predict", b"{}", 404),
    "GET predict": ("GET", "iris:predict", None, 405),
    "POST status": ("POST", "iris", b"{}", 405),
    "POST metadata": ("POST", "iris/metadata", b"{}", 405),
    "PUT": ("PUT", "iris:predict", b"{}", 405),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
async def test_errors_are_json_4xx(client: Callable[..., Any], case: str) -> None:
    method, rest, body, status = ERRORS[case]
    async with client() as http:
        response = await http.request(method, "/v1/models/" + rest, content=body)
        assert response.status_code == status, response.text
        assert isinstance(response.json()["error"], str) and response.json()["error"]
        if status == 405:
            assert response.headers["allow"]


async def test_limits_gzip_not_ready_and_metrics(client: Callable[..., Any]) -> None:
    async with client(limits={"max_body_bytes": 2048}, compress_min_bytes=0) as http:
        big = {"instances": [IRIS_ROWS[0]] * 200}
        response = await http.post("/v1/models/iris:predict", json=big)
        assert response.status_code == 413 and "limit" in response.json()["error"]
        body = gzip.compress(b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}')
        response = await http.post(
            "/v1/models/iris:predict",
            content=body,
            headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip"},
        )
        assert response.status_code == 200 and response.headers["content-encoding"] == "gzip", (
            response.text
        )
        assert response.json()["predictions"][0]["label"] == 0
        await http.post("/v1/models/iris:predict", json={"instances": [[1, 2, 3]]})
        metrics = (await http.get("/metrics")).text
        labels = 'model="iris",outcome="{}",protocol="tfserving_http",version="1"'
        assert "shipyard_requests_total{" + labels.format("success") + "} 1.0" in metrics
        assert "shipyard_requests_total{" + labels.format("invalid") + "} 1.0" in metrics
        await http.post("/v2/repository/models/iris/unload")
        for verb in ("predict", "classify"):
            response = await http.post(f"/v1/models/iris:{verb}", json={"instances": [[1]]})
            assert response.status_code == 503 and response.json()["error"]


async def test_decode_limits_apply_to_tf_requests(client: Callable[..., Any]) -> None:
    limits = {"max_tensor_elements": 8, "max_bytes_element": 4, "max_json_depth": 6}
    async with client(limits=limits) as http:
        fits = await http.post("/v1/models/iris:predict", json={"instances": IRIS_ROWS})
        assert fits.status_code == 200, fits.text
        for target, body, status in (
            ("iris:predict", {"instances": IRIS_ROWS * 2}, 413),
            ("iris:classify", {"examples": IRIS_ROWS * 2}, 413),
            ("strings:predict", {"instances": ["hello"]}, 413),
            ("strings:predict", {"instances": [b64(b"hello")]}, 413),
            ("iris:predict", {"inputs": [[[[[[1.0]]]]]]}, 400),
            ("iris:classify", {"examples": [[[[[[1.0]]]]]]}, 400),
        ):
            response = await http.post(f"/v1/models/{target}", json=body)
            assert response.status_code == status, (target, response.text)
            assert "limits." in response.json()["error"]


# -- codec units --------------------------------------------------------------------------


def test_tf_paths_in_the_route_table() -> None:
    def target(method: str, rest: str) -> tuple[str, dict[str, str]] | None:
        found = TABLE.find("/v1/models/" + rest)
        route = found.route(method) if found is not None else None
        return None if route is None or found is None else (route.handler, found.params)

    assert target("GET", "m") == ("tf.status", {"name": "m"})
    assert target("POST", "m/versions/3:predict") == ("tf.predict", {"name": "m", "version": "3"})
    assert target("GET", "m.v2_x-y/metadata") == ("tf.metadata", {"name": "m.v2_x-y"})
    assert target("GET", "m/versions/12/metadata") == (
        "tf.metadata",
        {"name": "m", "version": "12"},
    )
    assert target("POST", "m:regress") == ("tf.regress", {"name": "m"})
    assert target("POST", "m:explain") == ("tf.unknown_verb", {"name": "m", "verb": "explain"})
    assert target("POST", "m/labels/x:predict") == (
        "tf.labels",
        {"name": "m", "label": "x", "verb": "predict"},
    )
    for rest in ("", ":predict", "m/", "m/metadata:predict", "m/versions/1/metadata/x"):
        assert target("GET", rest) is None and target("POST", rest) is None, rest


def test_row_format_needs_one_row_per_instance() -> None:
    spec = TensorSpec(name="x", dtype="float32", shape=(-1, 2))
    decoded = tfserving.decode_predict(b'{"instances": [[1, 2], [3, 4]]}', inputs=[spec])
    assert decoded.format == "row" and decoded.rows == 2
    assert decoded.request.inputs["x"].dtype == np.float32
    with pytest.raises(ProtocolError, match="columnar"):
        tfserving.encode_predict({"total": np.float32(3.0) * np.ones(())}, decoded=decoded)
    columnar = tfserving.decode_predict(b'{"inputs": [[1, 2]]}', inputs=[spec])
    assert (
        tfserving.encode_predict({"total": np.array(3.5)}, decoded=columnar) == b'{"outputs":3.5}'
    )
    assert isinstance(columnar.request, InferenceRequest)


def test_strings_out_fall_back_to_b64_when_not_utf8() -> None:
    array = np.array([b"ok", b"\xff"], dtype=object)
    assert tfserving.array_to_value(array, name="out") == ["ok", {"b64": "/w=="}]
    nested = np.array([["a", "b"], ["c", "d"]], dtype=object)
    assert tfserving.array_to_value(nested, name="out") == [["a", "b"], ["c", "d"]]


# -- a real server ------------------------------------------------------------------------


@pytest.fixture
def server_url(models: Path, settings_for: Callable[..., ServerSettings]) -> Iterator[str]:
    with start_in_thread(settings=settings_for(models)) as running:
        yield running.url


def test_real_server_speaks_tf_serving(server_url: str) -> None:
    with httpx.Client(base_url=server_url, timeout=10) as http:
        status = http.get("/v1/models/iris").json()
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
        assert http.get("/v1/models/iris/metadata").json()["model_spec"]["version"] == "1"
        row = http.post("/v1/models/iris:predict", json={"instances": IRIS_ROWS})
        assert [p["label"] for p in row.json()["predictions"]] == [0, 2]
        columnar = http.post("/v1/models/pair:predict", json={"inputs": {"a": [[1, 2]], "b": [4]}})
        assert columnar.json() == {"outputs": {"doubled": [[2.0, 4.0]], "b_out": [4]}}
        classify = http.post("/v1/models/iris:classify", json={"examples": [IRIS_ROWS[1]]})
        assert max(classify.json()["result"][0], key=lambda pair: pair[1])[0] == "virginica"
        regress = http.post("/v1/models/petal:regress", json={"examples": [[5.1, 3.5, 1.4]]})
        assert len(regress.json()["result"]) == 1
        strings = http.post("/v1/models/strings:predict", json={"instances": [b64(b"hi")]})
        assert strings.json()["predictions"] == [{"echo": "hi", "echo_bytes": b64(b"hi")}]
        for method, path, code in (
            ("GET", "/v1/models/nope", 404),
            ("GET", "/v1/models/iris:predict", 405),
            ("POST", "/v1/models/iris:predict", 400),
        ):
            response = http.request(method, path, content=b"{}")
            assert response.status_code == code and response.json()["error"]
