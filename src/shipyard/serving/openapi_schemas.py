"""The JSON Schemas (2020-12) and shared parameters of the OpenAPI document (`openapi.py`).

`SCHEMAS` holds every request and response body by name (`components.schemas`), and
`PARAMETERS` the path and header parameters operations share (`components.parameters`).
"""

from __future__ import annotations

from typing import Any

from shipyard.package.dtypes import DTYPES

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def closed_object(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
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
_DIMS: Schema = {"type": "array", "items": {"type": "integer", "minimum": -1}}
_DURATION = closed_object({"count": _COUNT, "ns": _COUNT})
_TF_STATES = ["UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END"]

SCHEMAS: dict[str, Schema] = {
    "Error": closed_object({"error": {**_STRING, "description": "What went wrong, what to do."}}),
    "Live": closed_object({"live": _BOOL}),
    "Ready": closed_object({"ready": _BOOL}),
    "ModelReady": closed_object({"name": _STRING, "ready": _BOOL}),
    "ServerMetadata": closed_object(
        {"name": _STRING, "version": _STRING, "extensions": {"type": "array", "items": _STRING}}
    ),
    "Datatype": {"type": "string", "enum": sorted(d.v2 for d in DTYPES)},
    "MetadataTensor": closed_object(
        {
            "name": _STRING,
            "datatype": ref("Datatype"),
            "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}},
        }
    ),
    "ModelMetadata": closed_object(
        {
            "name": _STRING,
            "versions": {"type": "array", "items": _STRING},
            "platform": {"const": "onnx_onnxv1"},
            "inputs": {"type": "array", "items": ref("MetadataTensor")},
            "outputs": {"type": "array", "items": ref("MetadataTensor")},
        }
    ),
    "ConfigDataType": {"type": "string", "enum": sorted(d.triton for d in DTYPES)},
    "ConfigInput": closed_object(
        {
            "name": _STRING,
            "data_type": ref("ConfigDataType"),
            "format": {"const": "FORMAT_NONE"},
            "dims": _DIMS,
        }
    ),
    "ConfigOutput": closed_object(
        {"name": _STRING, "data_type": ref("ConfigDataType"), "dims": _DIMS}
    ),
    "ModelConfig": closed_object(
        {
            "name": _STRING,
            "platform": {"const": "onnxruntime_onnx"},
            "backend": {"const": "onnxruntime"},
            "version_policy": {
                "oneOf": [
                    closed_object(
                        {
                            "latest": closed_object(
                                {"num_versions": {"type": "integer", "minimum": 1}}
                            )
                        }
                    ),
                    closed_object({"all": closed_object({})}),
                    closed_object(
                        {
                            "specific": closed_object(
                                {"versions": {"type": "array", "items": _COUNT}}
                            )
                        }
                    ),
                ]
            },
            "max_batch_size": {
                **_COUNT,
                "description": "0: the server does not batch this version and dims are the "
                "full shapes; else the most rows per batch, and dims leave out the batch dim.",
            },
            "input": {"type": "array", "items": ref("ConfigInput")},
            "output": {"type": "array", "items": ref("ConfigOutput")},
            "instance_group": {
                "type": "array",
                "items": closed_object(
                    {
                        "name": _STRING,
                        "kind": {"enum": ["KIND_CPU", "KIND_GPU"]},
                        "count": {"type": "integer", "minimum": 1},
                    }
                ),
            },
        },
        {
            "dynamic_batching": closed_object(
                {
                    "max_queue_delay_microseconds": _COUNT,
                    "default_queue_policy": closed_object({"max_queue_size": _COUNT}),
                }
            )
        },
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
            "anyOf": [{"type": ["number", "boolean", "string"]}, ref("TensorData")],
        },
    },
    "RequestInput": closed_object(
        {
            "name": {"type": "string", "minLength": 1},
            "shape": {"type": "array", "items": _COUNT},
            "datatype": ref("Datatype"),
        },
        {"parameters": ref("Parameters"), "data": ref("TensorData")},
    ),
    "RequestOutput": closed_object(
        {"name": _STRING}, {"parameters": {"type": "object", "properties": {"binary_data": _BOOL}}}
    ),
    "InferenceRequest": closed_object(
        {"inputs": {"type": "array", "minItems": 1, "items": ref("RequestInput")}},
        {
            "id": _STRING,
            "parameters": ref("Parameters"),
            "outputs": {"type": "array", "items": ref("RequestOutput")},
        },
    ),
    "ResponseOutput": closed_object(
        {
            "name": _STRING,
            "shape": {"type": "array", "items": _COUNT},
            "datatype": ref("Datatype"),
        },
        {"parameters": ref("Parameters"), "data": {"type": "array"}},
    ),
    "InferenceResponse": closed_object(
        {"model_name": _STRING, "outputs": {"type": "array", "items": ref("ResponseOutput")}},
        {"model_version": _STRING, "id": _STRING, "parameters": ref("Parameters")},
    ),
    "IndexRequest": closed_object({}, {"ready": _BOOL}),
    "IndexEntry": closed_object(
        {
            "name": _STRING,
            "state": {"type": "string", "enum": ["READY", "UNAVAILABLE", "LOADING", "UNLOADING"]},
            "reason": _STRING,
        },
        {"version": _STRING},
    ),
    "LoadRequest": closed_object({}, {"parameters": {"type": "object"}}),
    "Empty": closed_object({}),
    "DurationStat": _DURATION,
    "ModelStats": closed_object(
        {
            "name": _STRING,
            "version": _STRING,
            "last_inference": _COUNT,
            "inference_count": _COUNT,
            "execution_count": _COUNT,
            "inference_stats": closed_object(
                {
                    k: ref("DurationStat")
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
                "items": closed_object(
                    {
                        "batch_size": {"type": "integer", "minimum": 1},
                        "compute_input": ref("DurationStat"),
                        "compute_infer": ref("DurationStat"),
                        "compute_output": ref("DurationStat"),
                    }
                ),
            },
        }
    ),
    "Statistics": closed_object({"model_stats": {"type": "array", "items": ref("ModelStats")}}),
    # -- TensorFlow Serving REST --
    "TfModelStatus": closed_object(
        {
            "model_version_status": {
                "type": "array",
                "items": closed_object(
                    {
                        "version": {"type": "string", "pattern": "^[0-9]+$"},
                        "state": {"type": "string", "enum": _TF_STATES},
                        "status": closed_object(
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
    "TfTensorInfo": closed_object(
        {
            "dtype": {"type": "string", "enum": [d.tf for d in DTYPES]},
            "tensor_shape": closed_object(
                {
                    "dim": {
                        "type": "array",
                        "items": closed_object(
                            {"size": {"type": "string", "pattern": "^-?[0-9]+$"}, "name": _STRING}
                        ),
                    },
                    "unknown_rank": _BOOL,
                }
            ),
            "name": _STRING,
        }
    ),
    "TfMetadata": closed_object(
        {
            "model_spec": closed_object(
                {
                    "name": _STRING,
                    "signature_name": _STRING,
                    "version": {"type": "string", "pattern": "^[1-9][0-9]*$"},
                }
            ),
            "metadata": closed_object(
                {
                    "signature_def": closed_object(
                        {
                            "signature_def": closed_object(
                                {
                                    "serving_default": closed_object(
                                        {
                                            "inputs": {
                                                "type": "object",
                                                "additionalProperties": ref("TfTensorInfo"),
                                            },
                                            "outputs": {
                                                "type": "object",
                                                "additionalProperties": ref("TfTensorInfo"),
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
    "TfBinary": closed_object({"b64": {"type": "string", "contentEncoding": "base64"}}),
    "TfValue": {
        "description": "A scalar, {b64} binary string, or nested list of them.",
        "anyOf": [
            {"type": ["number", "boolean", "string"]},
            ref("TfBinary"),
            {"type": "array", "items": ref("TfValue")},
        ],
    },
    "TfNamedValues": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": ref("TfValue"),
        "description": "One value per model input (or output), by name.",
    },
    "TfSignatureName": {"type": "string", "enum": ["", "serving_default"]},
    "TfPredictRequest": {
        **closed_object(
            {},
            {
                "signature_name": ref("TfSignatureName"),
                "instances": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"anyOf": [ref("TfValue"), ref("TfNamedValues")]},
                },
                "inputs": {"anyOf": [ref("TfValue"), ref("TfNamedValues")]},
            },
        ),
        "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}],
    },
    "TfPredictResponse": {
        "oneOf": [
            closed_object(
                {
                    "predictions": {
                        "type": "array",
                        "items": {"anyOf": [ref("TfValue"), ref("TfNamedValues")]},
                    }
                }
            ),
            closed_object({"outputs": {"anyOf": [ref("TfValue"), ref("TfNamedValues")]}}),
        ]
    },
    "TfFeature": {
        "anyOf": [
            {"type": "number"},
            {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 1},
        ]
    },
    "TfExamplesRequest": closed_object(
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
                                "anyOf": [ref("TfFeature"), _NUMBERS],
                            },
                        },
                        _NUMBERS,
                    ],
                },
            }
        },
        {
            "signature_name": ref("TfSignatureName"),
            "context": {"type": "object", "additionalProperties": ref("TfFeature")},
        },
    ),
    "TfClassifyResponse": closed_object(
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
    "TfRegressResponse": closed_object({"result": {"type": "array", "items": {"type": "number"}}}),
    "EmbeddingsRequest": closed_object(
        {
            "model": _STRING,
            "input": {"oneOf": [_STRING, {"type": "array", "items": _STRING, "minItems": 1}]},
        },
        {
            "encoding_format": {"type": "string", "enum": ["float", "base64"]},
            "dimensions": _INT,
            "user": _STRING,
        },
    ),
    "Embedding": closed_object(
        {
            "object": {"const": "embedding"},
            "index": _COUNT,
            "embedding": {
                "oneOf": [_NUMBERS, {"type": "string", "contentEncoding": "base64"}],
                "description": "Floats, or base64 of little-endian float32 values.",
            },
        }
    ),
    "EmbeddingsResponse": closed_object(
        {
            "object": {"const": "list"},
            "data": {"type": "array", "items": ref("Embedding")},
            "model": _STRING,
            "usage": closed_object({"prompt_tokens": _COUNT, "total_tokens": _COUNT}),
        }
    ),
}


PARAMETERS: dict[str, Any] = {
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
