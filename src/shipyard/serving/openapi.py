"""The OpenAPI 3.1 document of every HTTP endpoint, written by hand and served at /openapi.json.

No framework generates it: `ENDPOINTS` lists each path and method with its parameters,
request body and every status it can answer; `SCHEMAS` holds the JSON Schemas (2020-12)
of the bodies. Tests check that the document validates, that every route of the app is
in it and every path in it is routed, and that real responses match their schemas.
When you add a route, add it here too (the test tells you if you forget).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.package.tensorspec import NUMPY_TO_V2

OPENAPI_PATH = "/openapi.json"
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """A closed object: these properties and no others."""
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
        "additionalProperties": False,
    }


_STRING: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_BOOL: Schema = {"type": "boolean"}
_COUNT: Schema = {"type": "integer", "minimum": 0}
_NUMBERS: Schema = {"type": "array", "items": {"type": "number"}}
_DURATION = _object({"count": _COUNT, "ns": _COUNT})
_TF_STATES = ["UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END"]
_TF_DTYPES = ["DT_" + d for d in ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8")] + [
    "DT_" + d for d in ("INT16", "INT32", "INT64", "HALF", "FLOAT", "DOUBLE", "STRING")
]

SCHEMAS: dict[str, Schema] = {
    "Error": _object({"error": {**_STRING, "description": "What went wrong, what to do."}}),
    "Live": _object({"live": _BOOL}),
    "Ready": _object({"ready": _BOOL}),
    "ModelReady": _object({"name": _STRING, "ready": _BOOL}),
    "ServerMetadata": _object(
        {"name": _STRING, "version": _STRING, "extensions": {"type": "array", "items": _STRING}}
    ),
    "Datatype": {"type": "string", "enum": sorted(NUMPY_TO_V2.values())},
    "MetadataTensor": _object(
        {
            "name": _STRING,
            "datatype": _ref("Datatype"),
            "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}},
        }
    ),
    "ModelMetadata": _object(
        {
            "name": _STRING,
            "versions": {"type": "array", "items": _STRING},
            "platform": {"const": "onnx_onnxv1"},
            "inputs": {"type": "array", "items": _ref("MetadataTensor")},
            "outputs": {"type": "array", "items": _ref("MetadataTensor")},
        }
    ),
    "Parameters": {
        "type": "object",
        "additionalProperties": {"type": ["string", "number", "boolean"]},
        "description": "Free-form parameters; binary_data_output/binary_data/"
        "binary_data_size are the binary tensor extension's.",
    },
    "TensorData": {
        "description": "Row-major elements, flat or nested lists.",
        "type": "array",
        "items": {
            "anyOf": [{"type": ["number", "boolean", "string"]}, _ref("TensorData")],
        },
    },
    "RequestInput": _object(
        {
            "name": {"type": "string", "minLength": 1},
            "shape": {"type": "array", "items": _COUNT},
            "datatype": _ref("Datatype"),
        },
        {"parameters": _ref("Parameters"), "data": _ref("TensorData")},
    ),
    "RequestOutput": _object(
        {"name": _STRING}, {"parameters": {"type": "object", "properties": {"binary_data": _BOOL}}}
    ),
    "InferenceRequest": _object(
        {"inputs": {"type": "array", "minItems": 1, "items": _ref("RequestInput")}},
        {
            "id": _STRING,
            "parameters": _ref("Parameters"),
            "outputs": {"type": "array", "items": _ref("RequestOutput")},
        },
    ),
    "ResponseOutput": _object(
        {
            "name": _STRING,
            "shape": {"type": "array", "items": _COUNT},
            "datatype": _ref("Datatype"),
        },
        {"parameters": _ref("Parameters"), "data": {"type": "array"}},
    ),
    "InferenceResponse": _object(
        {"model_name": _STRING, "outputs": {"type": "array", "items": _ref("ResponseOutput")}},
        {"model_version": _STRING, "id": _STRING, "parameters": _ref("Parameters")},
    ),
    "IndexRequest": _object({}, {"ready": _BOOL}),
    "IndexEntry": _object(
        {
            "name": _STRING,
            "state": {"type": "string", "enum": ["READY", "UNAVAILABLE", "LOADING", "UNLOADING"]},
            "reason": _STRING,
        },
        {"version": _STRING},
    ),
    "LoadRequest": _object({}, {"parameters": {"type": "object"}}),
    "Empty": _object({}),
    "DurationStat": _DURATION,
    "ModelStats": _object(
        {
            "name": _STRING,
            "version": _STRING,
            "last_inference": _COUNT,
            "inference_count": _COUNT,
            "execution_count": _COUNT,
            "inference_stats": _object(
                {
                    k: _ref("DurationStat")
                    for k in (
                        "success",
                        "fail",
                        "queue",
                        "compute_input",
                        "compute_infer",
                        "compute_output",
                        "cache_hit",
                        "cache_miss",
                    )
                }
            ),
            "batch_stats": {
                "type": "array",
                "items": _object(
                    {
                        "batch_size": {"type": "integer", "minimum": 1},
                        "compute_input": _ref("DurationStat"),
                        "compute_infer": _ref("DurationStat"),
                        "compute_output": _ref("DurationStat"),
                    }
                ),
            },
        }
    ),
    "Statistics": _object({"model_stats": {"type": "array", "items": _ref("ModelStats")}}),
    # -- TensorFlow Serving REST --
    "TfModelStatus": _object(
        {
            "model_version_status": {
                "type": "array",
                "items": _object(
                    {
                        "version": {"type": "string", "pattern": "^[0-9]+$"},
                        "state": {"type": "string", "enum": _TF_STATES},
                        "status": _object(
                            {
                                "error_code": {"type": "string", "enum": ["OK", "UNKNOWN"]},
                                "error_message": _STRING,
                            }
                        ),
                    }
                ),
            }
        }
    ),
    "TfTensorInfo": _object(
        {
            "dtype": {"type": "string", "enum": _TF_DTYPES},
            "tensor_shape": _object(
                {
                    "dim": {
                        "type": "array",
                        "items": _object(
                            {"size": {"type": "string", "pattern": "^-?[0-9]+$"}, "name": _STRING}
                        ),
                    },
                    "unknown_rank": _BOOL,
                }
            ),
            "name": _STRING,
        }
    ),
    "TfMetadata": _object(
        {
            "model_spec": _object(
                {
                    "name": _STRING,
                    "signature_name": _STRING,
                    "version": {"type": "string", "pattern": "^[1-9][0-9]*$"},
                }
            ),
            "metadata": _object(
                {
                    "signature_def": _object(
                        {
                            "signature_def": _object(
                                {
                                    "serving_default": _object(
                                        {
                                            "inputs": {
                                                "type": "object",
                                                "additionalProperties": _ref("TfTensorInfo"),
                                            },
                                            "outputs": {
                                                "type": "object",
                                                "additionalProperties": _ref("TfTensorInfo"),
                                            },
                                            "method_name": {"const": "tensorflow/serving/predict"},
                                        }
                                    )
                                }
                            )
                        }
                    )
                }
            ),
        }
    ),
    "TfBinary": _object({"b64": {"type": "string", "contentEncoding": "base64"}}),
    "TfValue": {
        "description": "A scalar, {b64} binary string, or nested list of them.",
        "anyOf": [
            {"type": ["number", "boolean", "string"]},
            _ref("TfBinary"),
            {"type": "array", "items": _ref("TfValue")},
        ],
    },
    "TfNamedValues": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": _ref("TfValue"),
        "description": "One value per model input (or output), by name.",
    },
    "TfSignatureName": {"type": "string", "enum": ["", "serving_default"]},
    "TfPredictRequest": {
        **_object(
            {},
            {
                "signature_name": _ref("TfSignatureName"),
                "instances": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"anyOf": [_ref("TfValue"), _ref("TfNamedValues")]},
                },
                "inputs": {"anyOf": [_ref("TfValue"), _ref("TfNamedValues")]},
            },
        ),
        "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}],
    },
    "TfPredictResponse": {
        "oneOf": [
            _object(
                {
                    "predictions": {
                        "type": "array",
                        "items": {"anyOf": [_ref("TfValue"), _ref("TfNamedValues")]},
                    }
                }
            ),
            _object({"outputs": {"anyOf": [_ref("TfValue"), _ref("TfNamedValues")]}}),
        ]
    },
    "TfFeature": {
        "anyOf": [
            {"type": "number"},
            {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 1},
        ]
    },
    "TfExamplesRequest": _object(
        {
            "examples": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "description": "{feature: value} (names from the model's feature_names), "
                    '{"x": [v1, ...]} or [v1, ...] (the whole row).',
                    "anyOf": [
                        {
                            "type": "object",
                            "additionalProperties": {
                                "anyOf": [_ref("TfFeature"), _NUMBERS],
                            },
                        },
                        _NUMBERS,
                    ],
                },
            }
        },
        {
            "signature_name": _ref("TfSignatureName"),
            "context": {"type": "object", "additionalProperties": _ref("TfFeature")},
        },
    ),
    "TfClassifyResponse": _object(
        {
            "result": {
                "type": "array",
                "items": {
                    "type": "array",
                    "items": {
                        "type": "array",
                        "prefixItems": [_STRING, {"type": "number"}],
                        "items": False,
                        "minItems": 2,
                    },
                },
            }
        }
    ),
    "TfRegressResponse": _object({"result": {"type": "array", "items": {"type": "number"}}}),
}


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
                                                         "items": _ref("IndexEntry")}}}),
    Endpoint("post", "/v2/repository/models/{name}/load", "v2_load", "Load or reload a model",
             "V2", "Empty", (400, 404, 413), body="LoadRequest", body_required=False),
    Endpoint("post", "/v2/repository/models/{name}/unload", "v2_unload", "Unload a model", "V2",
             "Empty", (400, 404, 413), body="LoadRequest", body_required=False),
    *_tf_endpoints(),
    Endpoint("get", "/metrics", "metrics", "Prometheus metrics", "Operations", None,
             ok_content={"text/plain": {"schema": _STRING}}),
    Endpoint("get", OPENAPI_PATH, "openapi", "This OpenAPI document", "Operations", None,
             ok_content={"application/json": {"schema": {"type": "object"}}}),
]  # fmt: skip


_PARAMETERS: dict[str, Any] = {
    "name": {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "Model name (the repository folder).",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"},
    },
    "version": {
        "name": "version",
        "in": "path",
        "required": True,
        "description": "Model version, a positive integer.",
        "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,17}$"},
    },
    "request_id": {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": "Echoed back; made up by the server when absent.",
        "schema": {"type": "string", "maxLength": 64},
    },
    "header_length": {
        "name": "Inference-Header-Content-Length",
        "in": "header",
        "required": False,
        "description": "Length of the JSON header when binary tensors follow it.",
        "schema": {"type": "integer", "minimum": 1},
    },
    "content_encoding": {
        "name": "Content-Encoding",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "enum": ["identity", "gzip", "deflate"]},
    },
}
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
        "tags": [{"name": t} for t in ("V2", "TF Serving", "Operations")],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "parameters": _PARAMETERS,
            "headers": {
                "RequestId": {"schema": _STRING, "description": "The request's id."},
                "RetryAfter": {"schema": {"type": "string", "pattern": "^[0-9]+$"}},
            },
        },
    }


def _operation(ep: Endpoint) -> dict[str, Any]:
    params = [{"$ref": f"#/components/parameters/{p}"} for p in ("name", "version")
              if "{" + p + "}" in ep.path]  # fmt: skip
    params.append({"$ref": "#/components/parameters/request_id"})
    ok_content = ep.ok_content or {"application/json": {"schema": _ref(ep.ok or "Empty")}}
    if ep.binary:
        ok_content = {**ok_content, "application/octet-stream": {}}
    responses: dict[str, Any] = {
        "200": {"description": "OK", "headers": _REQUEST_ID_HEADER, "content": ok_content}
    }
    if ep.false_status:
        responses["400"] = _response("False", ep.false_status)
    for status in ep.errors:
        responses[str(status)] = _response(_ERROR_TEXT[status], "Error")
        if status == 503:
            responses["503"]["headers"] = {
                **_REQUEST_ID_HEADER,
                "Retry-After": {"$ref": "#/components/headers/RetryAfter"},
            }
    op: dict[str, Any] = {
        "operationId": ep.operation_id,
        "summary": ep.summary,
        "tags": [ep.tag],
        "parameters": params,
        "responses": responses,
    }
    if ep.body is not None:
        content: dict[str, Any] = {"application/json": {"schema": _ref(ep.body)}}
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
        "content": {"application/json": {"schema": _ref(schema)}},
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
