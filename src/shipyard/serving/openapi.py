"""The OpenAPI 3.1 document of every HTTP endpoint, written by hand and served at /openapi.json.

No framework generates it: `ENDPOINTS` lists each path and method with its parameters,
request body and every status it can answer; `openapi_schemas.SCHEMAS` holds the JSON
Schemas (2020-12) of the bodies. Each operation's `security` and token scope come from
`security.route_access`, the rule the server enforces: the health checks are open, every
other operation takes `Authorization: Bearer <token>` when the server runs with `--auth`
and may answer 401 (no or bad token) or 403 (token without the scope). Tests check that
the document validates, that every route of the app is in it and every path in it is
routed, and that real responses match their schemas. When you add a route, add it here
too (the test tells you if you forget).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.serving.json_schema import ref
from shipyard.serving.openapi_schemas import PARAMETERS, SCHEMAS
from shipyard.serving.security import ALL_MODELS, ANY_MODEL, route_access

OPENAPI_PATH = "/openapi.json"
BEARER = "bearerAuth"
"""Name of the security scheme (HTTP bearer, a `shipyard tokens create` token)."""


@dataclass(frozen=True)
class Endpoint:
    """One path + method: what it takes and every status it answers with."""

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    ok: str | None
    """Schema name of the 200 JSON body (None: described by `ok_content`)."""
    errors: tuple[int, ...] = ()
    body: str | None = None
    """Schema name of the JSON request body, if any."""
    body_required: bool = True
    binary: bool = False
    """Also takes and returns application/octet-stream (V2 binary tensor extension)."""
    false_status: str | None = None
    """Schema of the 400 body when 400 means 'false' (health), not an error."""
    ok_content: dict[str, Any] = field(default_factory=dict)


_ERROR_TEXT = {
    400: "Bad request: malformed body, values that do not fit the model, or an unsupported feature",
    404: "No such model or version (or endpoint)",
    401: "No token, or an unknown, revoked or expired one (only with --auth)",
    403: "The token's scopes do not grant this operation (only with --auth)",
    413: "Request body over the limit (after decompression)",
    503: "Model not ready, or its queue is full (see Retry-After)",
}
_MODEL, _VERSIONED = "{name}", "{name}/versions/{version}"
_POST_MODEL = (400, 404, 413, 503)


def _v2_model_endpoints() -> list[Endpoint]:
    out = []
    for suffix, kind in (("", "model"), ("_version", "version")):
        base = f"/v2/models/{_MODEL if kind == 'model' else _VERSIONED}"
        out += [
            Endpoint("get", base, f"v2_model_metadata{suffix}", "Model metadata", "V2",
                     "ModelMetadata", (404, 503)),
            Endpoint("get", f"{base}/ready", f"v2_model_ready{suffix}",
                     "Model ready (200) or not (400)", "V2", "ModelReady", (404,),
                     false_status="ModelReady"),
            Endpoint("post", f"{base}/infer", f"v2_infer{suffix}", "Inference", "V2",
                     "InferenceResponse", _POST_MODEL, body="InferenceRequest", binary=True),
            Endpoint("get", f"{base}/stats", f"v2_model_stats{suffix}", "Model statistics",
                     "V2", "Statistics", (404,)),
            Endpoint("get", f"{base}/config", f"v2_model_config{suffix}", "Model "
                     "configuration (Triton's layout)", "V2", "ModelConfig", (404, 503)),
        ]  # fmt: skip
    return out


def _tf_endpoints() -> list[Endpoint]:
    out = []
    for suffix, middle in (("", _MODEL), ("_version", _VERSIONED)):
        base = f"/v1/models/{middle}"
        out += [
            Endpoint("get", base, f"tf_model_status{suffix}", "Model status (all versions "
                     "when none is named)", "TF Serving", "TfModelStatus", (404,)),
            Endpoint("get", f"{base}/metadata", f"tf_model_metadata{suffix}",
                     "Model metadata (signature_def)", "TF Serving", "TfMetadata", (404, 503)),
            Endpoint("post", f"{base}:predict", f"tf_predict{suffix}", "Predict (row or "
                     "columnar format)", "TF Serving", "TfPredictResponse", _POST_MODEL,
                     body="TfPredictRequest"),
            Endpoint("post", f"{base}:classify", f"tf_classify{suffix}", "Classify examples "
                     "(classifiers with `classes` metadata)", "TF Serving", "TfClassifyResponse",
                     _POST_MODEL, body="TfExamplesRequest"),
            Endpoint("post", f"{base}:regress", f"tf_regress{suffix}", "Regress examples "
                     "(single-output regressors)", "TF Serving", "TfRegressResponse",
                     _POST_MODEL, body="TfExamplesRequest"),
        ]  # fmt: skip
    return out


ENDPOINTS: list[Endpoint] = [
    Endpoint("get", "/v2/health/live", "v2_live", "Server live", "V2", "Live"),
    Endpoint("get", "/v2/health/ready", "v2_ready", "Server ready (200) or not (400)", "V2",
             "Ready", false_status="Ready"),
    Endpoint("get", "/v2", "v2_server_metadata", "Server metadata", "V2", "ServerMetadata"),
    Endpoint("get", "/v2/models/stats", "v2_stats", "Statistics of every model", "V2",
             "Statistics"),
    *_v2_model_endpoints(),
    Endpoint("post", "/v2/repository/index", "v2_repository_index", "Repository index", "V2",
             None, (400, 413), body="IndexRequest", body_required=False,
             ok_content={"application/json": {"schema": {"type": "array",
                                                         "items": ref("IndexEntry")}}}),
    Endpoint("post", "/v2/repository/models/{name}/load", "v2_load", "Load or reload a model",
             "V2", "Empty", (400, 404, 413), body="LoadRequest", body_required=False),
    Endpoint("post", "/v2/repository/models/{name}/unload", "v2_unload", "Unload a model", "V2",
             "Empty", (400, 404, 413), body="LoadRequest", body_required=False),
    *_tf_endpoints(),
    Endpoint("post", "/v1/embeddings", "openai_embeddings", "Sentence embeddings (OpenAI-"
             "compatible; models whose processing embeds text)", "OpenAI", "EmbeddingsResponse",
             (400, 404, 413, 503), body="EmbeddingsRequest"),
    Endpoint("get", "/metrics", "metrics", "Prometheus metrics", "Operations", None,
             ok_content={"text/plain": {"schema": {"type": "string"}}}),
    Endpoint("get", OPENAPI_PATH, "openapi", "This OpenAPI document", "Operations", None,
             ok_content={"application/json": {"schema": {"type": "object"}}}),
]  # fmt: skip


_REQUEST_ID_HEADER = {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}}


def build_document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for Shipyard `version`."""
    paths: dict[str, dict[str, Any]] = {}
    for ep in ENDPOINTS:
        paths.setdefault(ep.path, {})[ep.method] = _operation(ep)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Shipyard model server",
            "version": version,
            "description": "Serves verified ONNX model packages over the Open Inference "
            "Protocol (KServe V2) and the TensorFlow Serving REST API. Every error is "
            '{"error": "..."}.',
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": t} for t in ("V2", "TF Serving", "OpenAI", "Operations")],
        "security": [{BEARER: []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "parameters": PARAMETERS,
            "headers": _HEADERS,
            "securitySchemes": {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from `shipyard tokens create`, needed when the "
                    "server runs with --auth; its scopes (infer|metadata|admin:MODEL-GLOB, "
                    "admin implies the others) must grant the operation.",
                }
            },
        },
    }


_HEADERS: dict[str, Any] = {
    "RequestId": {"schema": {"type": "string"}, "description": "The request's id."},
    "RetryAfter": {"schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "WWWAuthenticate": {
        "schema": {"type": "string", "pattern": "^Bearer "},
        "description": 'Bearer realm="shipyard" (403: error="insufficient_scope").',
    },
}


_STATUS_HEADER = {
    401: ("WWW-Authenticate", "WWWAuthenticate"),
    403: ("WWW-Authenticate", "WWWAuthenticate"),
    503: ("Retry-After", "RetryAfter"),
}
"""The header an error status carries besides X-Request-ID, and its component."""


def required_scope(path: str) -> str | None:
    """The token scope an operation on `path` needs with --auth (None: open to all)."""
    access = route_access(path)  # a template's "{name}" stands in for the model's name
    if access is None:
        return None
    if access.model == ANY_MODEL:
        return f"{access.action}:<any model>"
    if access.model == ALL_MODELS:
        return f"{access.action}:*"
    return f"{access.action}:{access.model}"


def _operation(ep: Endpoint) -> dict[str, Any]:
    params = [{"$ref": f"#/components/parameters/{p}"} for p in ("name", "version")
              if "{" + p + "}" in ep.path]  # fmt: skip
    params.append({"$ref": "#/components/parameters/request_id"})
    ok_content = ep.ok_content or {"application/json": {"schema": ref(ep.ok or "Empty")}}
    if ep.binary:
        ok_content = {**ok_content, "application/octet-stream": {}}
    responses: dict[str, Any] = {
        "200": {"description": "OK", "headers": _REQUEST_ID_HEADER, "content": ok_content}
    }
    if ep.false_status:
        responses["400"] = _response("False", ep.false_status)
    scope = required_scope(ep.path)
    errors = set(ep.errors) | ({413} if ep.body is not None else set())
    if scope is not None:
        errors |= {401, 403}
    for status in sorted(errors):
        responses[str(status)] = _response(_ERROR_TEXT[status], "Error")
        if status in _STATUS_HEADER:
            header, component = _STATUS_HEADER[status]
            responses[str(status)]["headers"] = {
                **_REQUEST_ID_HEADER,
                header: {"$ref": f"#/components/headers/{component}"},
            }
    op: dict[str, Any] = {
        "operationId": ep.operation_id,
        "summary": ep.summary,
        "tags": [ep.tag],
        "parameters": params,
        "responses": responses,
        "security": [] if scope is None else [{BEARER: []}],
    }
    if scope is None:
        op["description"] = "Open: never needs a token."
    else:
        implied = "" if scope.startswith("admin:") else " (or the admin scope for it)"
        op["description"] = f"With --auth, needs a token with scope `{scope}`{implied}."
        if ep.path == "/metrics":
            op["description"] += " Open when the server setting metrics_require_auth is false."
    if ep.body is not None:
        content: dict[str, Any] = {"application/json": {"schema": ref(ep.body)}}
        params.append({"$ref": "#/components/parameters/content_encoding"})
        if ep.binary:
            params.append({"$ref": "#/components/parameters/header_length"})
            content["application/octet-stream"] = {}
        op["requestBody"] = {"required": ep.body_required, "content": content}
    return op


def _response(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _REQUEST_ID_HEADER,
        "content": {"application/json": {"schema": ref(schema)}},
    }


def route(version: str | None = None) -> Route:
    """GET /openapi.json: the document for `version` (default: this Shipyard's), rendered once."""
    if version is None:
        import shipyard

        version = shipyard.__version__
    body = orjson.dumps(build_document(version))

    async def openapi(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Route(OPENAPI_PATH, openapi, methods=["GET"])
