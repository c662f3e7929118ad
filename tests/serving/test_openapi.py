"""The OpenAPI document: valid 3.1, in step with the app's routes, and true to real responses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
from onnx import TensorProto, helper

import shipyard
from shipyard.security.tokens import TokenStore
from shipyard.serving.openapi import BEARER, ENDPOINTS, OPENAPI_PATH, build_document, required_scope
from shipyard.serving.routes import ROUTES
from shipyard.serving.routing import TABLE
from shipyard.serving.settings import ServerSettings

pytestmark = pytest.mark.anyio

SAMPLE_PARAMS = {"name": "clf", "version": "1"}


def _onnx(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def classifier_graph() -> onnx.ModelProto:
    """X: float32[?, 2] -> probabilities = softmax(X); a two-class 'classifier'."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 2])
    p = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])
    node = helper.make_node("Softmax", ["X"], ["probabilities"], axis=1)
    return _onnx(helper.make_graph([node], "clf", [x], [p]))


def regressor_graph() -> onnx.ModelProto:
    """X: float32[?, 2] -> y = sum(X, axis 1) as float32[?, 1]."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    node = helper.make_node("ReduceSum", ["X", "axes"], ["y"], keepdims=1)
    return _onnx(helper.make_graph([node], "reg", [x], [y], initializer=[axes]))


@pytest.fixture
def models(repo: Path, pack: Callable[..., Path]) -> Path:
    pack()  # scale
    metadata = {"classes": [0, 1], "class_names": ["no", "yes"], "feature_names": ["a", "b"]}
    shipyard.pack(classifier_graph(), name="clf", repo=repo, metadata=metadata)
    shipyard.pack(regressor_graph(), name="reg", repo=repo, metadata={"task": "regression"})
    for _ in range(2):  # a rollout of version 2 beside version 1
        shipyard.pack(classifier_graph(), name="ro", repo=repo, metadata=metadata)
    (repo / "ro" / "model.toml").write_text("[rollout]\ncandidate = 2\n", encoding="utf-8")
    from tests.processing.tiny import tiny_encoder, tiny_sample, write_tiny_tokenizer

    from shipyard.processing.build import text_plan

    tokenizer = write_tiny_tokenizer(repo.parent / "tokenizer" / "tokenizer.json")
    plan = text_plan(tokenizer, max_length=8, pooling="mean", normalize=True)
    shipyard.pack(
        tiny_encoder(), name="tiny", repo=repo, sample_input=tiny_sample(), processing=plan
    )
    return repo


def test_document_is_valid_openapi_3_1() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    doc = build_document("0.0.0")
    validator.validate(doc)
    assert doc["openapi"].startswith("3.1")
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)) == len(ENDPOINTS)


async def test_served_document_and_routes_agree(
    models: Path, settings_for: Callable[..., ServerSettings], app_client: Callable[..., Any]
) -> None:
    async with app_client(settings_for(models)) as client:
        response = await client.get(OPENAPI_PATH)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        doc = response.json()
        assert doc == build_document(shipyard.__version__)
        # every documented operation reaches its route over the app (no "no such endpoint")
        for path, ops in doc["paths"].items():
            for method in ops:
                url = path.format(**SAMPLE_PARAMS)
                answer = await client.request(method.upper(), url, content=b"{}")
                assert answer.status_code not in (404, 405) or "no such endpoint" not in (
                    answer.text
                ), f"{method.upper()} {path}"
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    # every route of the table is documented, or says it is not (operation None)
    for route in ROUTES:
        if route.operation is not None:
            assert (route.path, route.method.lower()) in documented, route.path
    # every documented operation is matched by its own row
    for path, method in documented:
        found = TABLE.find(path.format(**SAMPLE_PARAMS))
        assert found is not None, f"{method.upper()} {path} is documented but no route serves it"
        route = found.route(method.upper())
        assert route is not None and route.path == path, f"{method.upper()} {path}"


OPEN_PATHS = {"/v2/health/live", "/v2/health/ready"}


def test_security_is_documented_per_operation() -> None:
    doc = build_document("0")
    scheme = doc["components"]["securitySchemes"][BEARER]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert doc["security"] == [{BEARER: []}]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            if path in OPEN_PATHS:
                assert op["security"] == [], where
                assert not {"401", "403"} & set(op["responses"]), where
            else:
                assert op["security"] == [{BEARER: []}], where
                for status in ("401", "403"):
                    response = op["responses"][status]
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, where
                    assert "WWW-Authenticate" in response["headers"], where
            if "requestBody" in op:
                assert "413" in op["responses"], where


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/v2/health/live", None),
        ("/v2", "metadata:<any model>"),
        ("/v2/models/stats", "metadata:*"),
        ("/v2/models/{name}/versions/{version}/infer", "infer:{name}"),
        ("/v1/models/{name}:classify", "infer:{name}"),
        ("/v1/models/{name}/versions/{version}/metadata", "metadata:{name}"),
        ("/v2/repository/index", "admin:*"),
        ("/v2/repository/models/{name}/unload", "admin:{name}"),
        ("/metrics", "metadata:*"),
        (OPENAPI_PATH, "metadata:<any model>"),
    ],
)
def test_required_scope_follows_the_enforced_rule(path: str, scope: str | None) -> None:
    assert required_scope(path) == scope


async def test_refusals_match_the_documented_responses(
    models: Path,
    tmp_path: Path,
    settings_for: Callable[..., ServerSettings],
    app_client: Callable[..., Any],
) -> None:
    """With --auth: no token is 401 and a token without the scope 403, as documented."""
    doc = build_document(shipyard.__version__)
    tokens = TokenStore(tmp_path / "tokens.json")
    unrelated = tokens.create("unrelated", ["infer:someone-else"])
    async with app_client(settings_for(models, auth=tokens.path)) as client:
        for path, ops in doc["paths"].items():
            url = path.format(**SAMPLE_PARAMS)
            for method, op in ops.items():
                for headers, status in (({}, 401), ({"Authorization": f"Bearer {unrelated}"}, 403)):
                    where = f"{method.upper()} {url} ({status})"
                    response = await client.request(method, url, headers=headers)
                    if path in OPEN_PATHS:
                        assert response.status_code == 200, where
                        continue
                    assert response.status_code == status, f"{where}: {response.text}"
                    assert response.headers["www-authenticate"].startswith("Bearer "), where
                    documented = op["responses"][str(status)]
                    schema = documented["content"]["application/json"]["schema"]
                    _validate(doc, schema, response.json(), where)


# Every operation at least once with 200, plus the documented error statuses.
Step = tuple[str, str, Any, int, dict[str, str]]


def step(method: str, template: str, body: Any = None, status: int = 200, **params: str) -> Step:
    return method, template, body, status, {**SAMPLE_PARAMS, **params}


X12 = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
TOUR: list[Step] = [
    step("get", "/v2/health/live"),
    step("get", "/v2/health/ready"),
    step("get", "/v2"),
    step("get", "/v2/models/stats"),
    step("get", "/v2/models/{name}"),
    step("get", "/v2/models/{name}/versions/{version}"),
    step("get", "/v2/models/{name}/ready"),
    step("get", "/v2/models/{name}/versions/{version}/ready"),
    step("get", "/v2/models/{name}/stats"),
    step("get", "/v2/models/{name}/versions/{version}/stats"),
    step("get", "/v2/models/{name}/config"),
    step("get", "/v2/models/{name}/versions/{version}/config"),
    step("post", "/v2/models/{name}/infer", X12),
    step(
        "post",
        "/v2/models/{name}/versions/{version}/infer",
        {**X12, "id": "7", "outputs": [{"name": "probabilities"}]},
    ),
    step("post", "/v2/repository/index"),
    step("post", "/v2/repository/index", {"ready": True}),
    step("post", "/v2/repository/models/{name}/load"),
    step("get", "/v1/models/{name}"),
    step("get", "/v1/models/{name}/versions/{version}"),
    step("get", "/v1/models/{name}/metadata"),
    step("get", "/v1/models/{name}/versions/{version}/metadata"),
    step("post", "/v1/models/{name}:predict", {"instances": [[1, 2], [3, 4]]}),
    step("post", "/v1/models/{name}/versions/{version}:predict", {"inputs": {"X": [[1, 2]]}}),
    step("post", "/v1/models/{name}:classify", {"examples": [{"a": 1, "b": 2}]}),
    step("post", "/v1/models/{name}/versions/{version}:classify", {"examples": [[1, 2]]}),
    step("post", "/v1/models/{name}:regress", {"examples": [[1, 2]]}, name="reg"),
    step(
        "post",
        "/v1/models/{name}/versions/{version}:regress",
        {"examples": [{"x": [1, 2]}]},
        name="reg",
    ),
    step("post", "/v1/embeddings", {"model": "tiny", "input": ["hello world", "a"]}),
    step("post", "/v1/embeddings", {"model": "tiny", "input": "a", "encoding_format": "base64"}),
    step("post", "/v1/embeddings", {"model": "tiny", "input": [[2, 4, 5, 3], [2, 6, 3]]}),
    step("post", "/v1/embeddings", {"model": "tiny", "input": [2, 6, 3]}),
    step("get", "/v2/models/{name}/rollout", name="ro"),
    step("post", "/v2/models/{name}/rollout/promote", name="ro"),
    step("post", "/v2/models/{name}/rollout/promote", status=409, name="ro"),
    step("post", "/v2/models/{name}/rollout/rollback", name="ro"),
    step("get", "/v2/models/{name}/rollout", status=409),
    step("get", "/v2/models/{name}/rollout", status=404, name="nope"),
    step("get", "/metrics"),
    step("get", OPENAPI_PATH),
    # errors
    step("get", "/v2/models/{name}", status=404, name="nope"),
    step("get", "/v2/models/{name}/config", status=404, name="nope"),
    step("get", "/v2/models/{name}/versions/{version}/ready", status=404, version="9"),
    step("post", "/v2/models/{name}/infer", {"inputs": []}, 400),
    step("post", "/v2/models/{name}/infer", {"inputs": [{"name": "X"}]}, 400),
    step("post", "/v2/repository/index", {"ready": 1}, 400),
    step("post", "/v1/embeddings", {"model": "clf", "input": "a"}, 400),
    step("post", "/v1/embeddings", {"model": "nope", "input": "a"}, 404),
    step("post", "/v2/repository/models/{name}/load", status=404, name="nope"),
    step("get", "/v1/models/{name}", status=404, name="nope"),
    step("get", "/v1/models/{name}/versions/{version}/metadata", status=404, version="9"),
    step("post", "/v1/models/{name}:predict", {"instances": [[1, 2, 3]]}, 400),
    step("post", "/v1/models/{name}:regress", {"examples": [[1, 2]]}, 400),
    step("post", "/v1/models/{name}:predict", {"instances": [[0.5, 0.5]] * 600}, 413),
    step("post", "/v2/models/{name}/infer", {"inputs": [{"name": "X", "data": [0.0] * 1200}]}, 413),
    step("post", "/v2/repository/models/{name}/unload"),
    step("get", "/v2/models/{name}/ready", status=400),
    step("get", "/v2/models/{name}", status=503),
    step("get", "/v2/models/{name}/config", status=503),
    step("get", "/v1/models/{name}/metadata", status=503),
    step("post", "/v1/models/{name}:predict", {"instances": [[1, 2]]}, 503),
    step("post", "/v1/models/{name}:classify", {"examples": [[1, 2]]}, 503),
    step("post", "/v2/models/{name}/infer", X12, 503),
]


def _validate(doc: dict[str, Any], schema: dict[str, Any], body: Any, where: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    rooted = {**schema, "components": doc["components"]}  # so "#/components/..." resolves
    errors = list(jsonschema.Draft202012Validator(rooted).iter_errors(body))
    assert not errors, f"{where}: {[e.message for e in errors][:3]}"


async def test_real_responses_match_the_documented_schemas(
    models: Path, settings_for: Callable[..., ServerSettings], app_client: Callable[..., Any]
) -> None:
    doc = build_document(shipyard.__version__)
    seen_ok: set[tuple[str, str]] = set()
    settings = settings_for(models, limits={"max_body_bytes": 4096})
    async with app_client(settings) as client:
        for method, template, body, status, params in TOUR:
            url = template.format(**params)
            where = f"{method.upper()} {url}"
            response = await client.request(
                method, url, content=None if body is None else _json(body)
            )
            assert response.status_code == status, f"{where}: {response.text}"
            operation = doc["paths"][template][method]
            documented = operation["responses"].get(str(status))
            assert documented is not None, f"{where}: status {status} is not documented"
            media = response.headers["content-type"].split(";")[0]
            assert media in documented["content"], f"{where}: {media} is not documented"
            schema = documented["content"][media].get("schema")
            if media == "application/json" and schema is not None:
                _validate(doc, schema, response.json(), where)
            if status == 200:
                seen_ok.add((template, method))
    every = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert every - seen_ok == set(), "operations the tour never saw succeed"


def test_request_examples_match_the_request_schemas() -> None:
    doc = build_document("0")
    for method, path, body, status, _ in TOUR:
        operation = doc["paths"][path][method]
        if body is None or status != 200 or "requestBody" not in operation:
            continue
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        _validate(doc, schema, body, f"request of {method.upper()} {path}")
    bad = {"instances": [[1]], "inputs": [[1]]}  # both formats: the schema refuses it too
    schema = {"$ref": "#/components/schemas/TfPredictRequest"}
    jsonschema = pytest.importorskip("jsonschema")
    rooted = {**schema, "components": doc["components"]}
    assert not jsonschema.Draft202012Validator(rooted).is_valid(bad)


def _json(body: Any) -> bytes:
    return httpx.Request("POST", "http://x", json=body).content
