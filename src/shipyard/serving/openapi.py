"""The OpenAPI 3.1 document of every HTTP endpoint, written by hand and served at /openapi.json.

No framework generates it: each row of the route table (`routes.ROUTES`) carries its
operation (parameters, request body and every status it can answer); `openapi_schemas.SCHEMAS`
holds the JSON Schemas (2020-12) of the bodies. Each operation's `security` and token scope
come from the same row, the rule the server enforces: the health checks are open, every
other operation takes `Authorization: Bearer <token>` when the server runs with `--auth`
and may answer 401 (no or bad token) or 403 (token without the scope). Tests check that
the document validates, that every route of the app is in it and every path in it is
routed, and that real responses match their schemas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from shipyard.serving.json_schema import ref
from shipyard.serving.openapi_schemas import PARAMETERS, SCHEMAS
from shipyard.serving.routes import ALL_MODELS, ANY_MODEL, ROUTES, Operation, Route
from shipyard.serving.routing import TABLE

OPENAPI_PATH = "/openapi.json"
BEARER = "bearerAuth"
"""Name of the security scheme (HTTP bearer, a `shipyard tokens create` token)."""


@dataclass(frozen=True)
class Endpoint:
    """One documented path + method: its route and its operation."""

    method: str
    """Lower-case, as OpenAPI writes it."""
    path: str
    operation_id: str
    route: Route
    op: Operation


_ERROR_TEXT = {
    400: "Bad request: malformed body, values that do not fit the model, or an unsupported feature",
    404: "No such model or version (or endpoint)",
    401: "No token, or an unknown, revoked or expired one (only with --auth)",
    403: "The token's scopes do not grant this operation (only with --auth)",
    413: "Request body over the limit (after decompression)",
    409: "The model has no rollout, or its rollout is already where this call would take it",
    503: "Model not ready, or its queue is full (see Retry-After)",
    504: "The request's timeout parameter passed before the model answered",
}

ENDPOINTS: list[Endpoint] = [
    Endpoint(r.method.lower(), r.path, r.operation.operation_id, r, r.operation)
    for r in ROUTES
    if r.operation is not None
]
"""Every documented operation, in the route table's order."""


_REQUEST_ID_HEADER = {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}}


def build_document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for Shipyard `version`."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method] = _operation(endpoint)
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
    access = TABLE.access(path)  # a template's "{name}" stands in for the model's name
    if access is None:
        return None
    if access.model == ANY_MODEL:
        return f"{access.action}:<any model>"
    if access.model == ALL_MODELS:
        return f"{access.action}:*"
    return f"{access.action}:{access.model}"


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    ep = endpoint.op
    path = endpoint.path
    params = [{"$ref": f"#/components/parameters/{p}"} for p in ("name", "version")
              if "{" + p + "}" in path]  # fmt: skip
    params.append({"$ref": "#/components/parameters/request_id"})
    ok_content = ep.ok_content or {"application/json": {"schema": ref(ep.ok or "Empty")}}
    if ep.binary:
        ok_content = {**ok_content, "application/octet-stream": {}}
    responses: dict[str, Any] = {
        "200": {"description": "OK", "headers": _REQUEST_ID_HEADER, "content": ok_content}
    }
    if ep.false_status:
        responses["400"] = _response("False", ep.false_status)
    scope = required_scope(path)
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
        if endpoint.route.metrics:
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


def handler(version: str | None = None) -> Any:
    """GET /openapi.json: the document for `version` (default: this Shipyard's), rendered once."""
    if version is None:
        import shipyard

        version = shipyard.__version__
    body = orjson.dumps(build_document(version))

    async def openapi(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return openapi
