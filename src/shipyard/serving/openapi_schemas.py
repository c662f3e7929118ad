"""The JSON Schemas (2020-12) and shared parameters of the OpenAPI document (`openapi.py`).

`SCHEMAS` holds every request and response body by name (`components.schemas`): KServe V2
and embeddings here, TF Serving's from `openapi_tfserving`; `PARAMETERS` the path and
header parameters operations share (`components.parameters`).
"""

from __future__ import annotations

from typing import Any

from shipyard.package.dtypes import DTYPES
from shipyard.serving.json_schema import (
    BOOL,
    COUNT,
    DIMS,
    INT,
    NUMBERS,
    STRING,
    Schema,
    closed_object,
    ref,
)
from shipyard.serving.openapi_tfserving import TF_SCHEMAS

_DURATION = closed_object({"count": COUNT, "ns": COUNT})
TOKEN_IDS: Schema = {"type": "array", "items": COUNT, "minItems": 1}

SCHEMAS: dict[str, Schema] = {
    "Error": closed_object({"error": {**STRING, "description": "What went wrong, what to do."}}),
    "Live": closed_object({"live": BOOL}),
    "Ready": closed_object({"ready": BOOL}),
    "ModelReady": closed_object({"name": STRING, "ready": BOOL}),
    "ServerMetadata": closed_object(
        {"name": STRING, "version": STRING, "extensions": {"type": "array", "items": STRING}}
    ),
    "Datatype": {"type": "string", "enum": sorted(d.v2 for d in DTYPES)},
    "MetadataTensor": closed_object(
        {
            "name": STRING,
            "datatype": ref("Datatype"),
            "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}},
        }
    ),
    "ModelMetadata": closed_object(
        {
            "name": STRING,
            "versions": {"type": "array", "items": STRING},
            "platform": {"const": "onnx_onnxv1"},
            "inputs": {"type": "array", "items": ref("MetadataTensor")},
            "outputs": {"type": "array", "items": ref("MetadataTensor")},
        }
    ),
    "ConfigDataType": {"type": "string", "enum": sorted(d.triton for d in DTYPES)},
    "ConfigInput": closed_object(
        {
            "name": STRING,
            "data_type": ref("ConfigDataType"),
            "format": {"const": "FORMAT_NONE"},
            "dims": DIMS,
        }
    ),
    "ConfigOutput": closed_object(
        {"name": STRING, "data_type": ref("ConfigDataType"), "dims": DIMS}
    ),
    "ModelConfig": closed_object(
        {
            "name": STRING,
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
                        {"specific": closed_object({"versions": {"type": "array", "items": COUNT}})}
                    ),
                ]
            },
            "max_batch_size": {
                **COUNT,
                "description": "0: the server does not batch this version and dims are the "
                "full shapes; else the most rows per batch, and dims leave out the batch dim.",
            },
            "input": {"type": "array", "items": ref("ConfigInput")},
            "output": {"type": "array", "items": ref("ConfigOutput")},
            "instance_group": {
                "type": "array",
                "items": closed_object(
                    {
                        "name": STRING,
                        "kind": {"enum": ["KIND_CPU", "KIND_GPU"]},
                        "count": {"type": "integer", "minimum": 1},
                    }
                ),
            },
        },
        {
            "dynamic_batching": closed_object(
                {
                    "max_queue_delay_microseconds": COUNT,
                    "default_queue_policy": closed_object({"max_queue_size": COUNT}),
                }
            )
        },
    ),
    "Parameters": {
        "type": "object",
        "additionalProperties": {"type": ["string", "number", "boolean"]},
        "description": "Free-form parameters; binary_data_output/binary_data/"
        "binary_data_size are the binary tensor extension's; on a request, timeout "
        "(microseconds) and priority (1 = highest) are Triton's schedule policy.",
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
            "shape": {"type": "array", "items": COUNT},
            "datatype": ref("Datatype"),
        },
        {"parameters": ref("Parameters"), "data": ref("TensorData")},
    ),
    "RequestOutput": closed_object(
        {"name": STRING}, {"parameters": {"type": "object", "properties": {"binary_data": BOOL}}}
    ),
    "InferenceRequest": closed_object(
        {"inputs": {"type": "array", "minItems": 1, "items": ref("RequestInput")}},
        {
            "id": STRING,
            "parameters": ref("Parameters"),
            "outputs": {"type": "array", "items": ref("RequestOutput")},
        },
    ),
    "ResponseOutput": closed_object(
        {
            "name": STRING,
            "shape": {"type": "array", "items": COUNT},
            "datatype": ref("Datatype"),
        },
        {"parameters": ref("Parameters"), "data": {"type": "array"}},
    ),
    "InferenceResponse": closed_object(
        {"model_name": STRING, "outputs": {"type": "array", "items": ref("ResponseOutput")}},
        {"model_version": STRING, "id": STRING, "parameters": ref("Parameters")},
    ),
    "IndexRequest": closed_object({}, {"ready": BOOL}),
    "IndexEntry": closed_object(
        {
            "name": STRING,
            "state": {"type": "string", "enum": ["READY", "UNAVAILABLE", "LOADING", "UNLOADING"]},
            "reason": STRING,
        },
        {"version": STRING},
    ),
    "LoadRequest": closed_object({}, {"parameters": {"type": "object"}}),
    "Empty": closed_object({}),
    "DurationStat": _DURATION,
    "ModelStats": closed_object(
        {
            "name": STRING,
            "version": STRING,
            "last_inference": COUNT,
            "inference_count": COUNT,
            "execution_count": COUNT,
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
    "Rollout": {
        "type": "object",
        "description": "A model's rollout (Shipyard's extension): phase, versions, gate, "
        "evidence, decision.",
        "required": ["model", "phase", "mode", "percent", "candidate_version", "gate"],
        "properties": {
            "model": STRING,
            "phase": {
                "type": "string",
                "enum": ["waiting", "canary", "shadow", "passed", "promoted", "rolled_back"],
            },
            "mode": {"type": "string", "enum": ["canary", "shadow"]},
            "percent": {"type": "number"},
            "stable_version": {"type": ["string", "null"]},
            "candidate_version": STRING,
            "serving_version": {"type": ["string", "null"]},
            "elapsed_s": {"type": "number"},
            "gate": {"type": "object"},
            "evidence": {"type": "object"},
            "decision": {"type": ["object", "null"]},
        },
    },
    **TF_SCHEMAS,
    "EmbeddingsRequest": closed_object(
        {
            "model": STRING,
            "input": {
                "oneOf": [
                    STRING,
                    {"type": "array", "items": STRING, "minItems": 1},
                    TOKEN_IDS,
                    {"type": "array", "items": TOKEN_IDS, "minItems": 1},
                ],
                "description": "Texts, or token ids of the package's tokenizer (fed as sent).",
            },
        },
        {
            "encoding_format": {"type": "string", "enum": ["float", "base64"]},
            "dimensions": INT,
            "user": STRING,
        },
    ),
    "Embedding": closed_object(
        {
            "object": {"const": "embedding"},
            "index": COUNT,
            "embedding": {
                "oneOf": [NUMBERS, {"type": "string", "contentEncoding": "base64"}],
                "description": "Floats, or base64 of little-endian float32 values.",
            },
        }
    ),
    "EmbeddingsResponse": closed_object(
        {
            "object": {"const": "list"},
            "data": {"type": "array", "items": ref("Embedding")},
            "model": STRING,
            "usage": closed_object({"prompt_tokens": COUNT, "total_tokens": COUNT}),
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
