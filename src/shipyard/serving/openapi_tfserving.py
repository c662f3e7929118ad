"""The JSON Schemas (2020-12) of TensorFlow Serving's REST bodies in the OpenAPI document."""

from __future__ import annotations

from shipyard.package.dtypes import DTYPES
from shipyard.serving.json_schema import BOOL, NUMBERS, STRING, Schema, closed_object, ref

_TF_STATES = ["UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END"]

TF_SCHEMAS: dict[str, Schema] = {
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
                                "error_message": STRING,
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
                            {"size": {"type": "string", "pattern": "^-?[0-9]+$"}, "name": STRING}
                        ),
                    },
                    "unknown_rank": BOOL,
                }
            ),
            "name": STRING,
        }
    ),
    "TfMetadata": closed_object(
        {
            "model_spec": closed_object(
                {
                    "name": STRING,
                    "signature_name": STRING,
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
                                "anyOf": [ref("TfFeature"), NUMBERS],
                            },
                        },
                        NUMBERS,
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
                        "prefixItems": [STRING, {"type": "number"}],
                        "items": False,
                        "minItems": 2,
                    },
                },
            }
        }
    ),
    "TfRegressResponse": closed_object({"result": {"type": "array", "items": {"type": "number"}}}),
}
