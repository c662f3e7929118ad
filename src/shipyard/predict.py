"""Local inference on V2 (Open Inference Protocol) JSON: request bytes in, response dict out."""

from __future__ import annotations

from typing import Any

import orjson

from shipyard.codecs.v2 import decode_request, encode_response, predict
from shipyard.model import Model


def predict_json(model: Model, body: bytes) -> dict[str, Any]:
    """Decode a V2 JSON request, run it on `model` in this process, return the V2 response.

    Outputs are always returned as JSON data here (binary_data flags are ignored), since the
    result is printed or handed to Python callers, not sent over a binary-capable wire.
    """
    request = decode_request(body)
    request.parameters.pop("binary_data_output", None)
    for output in request.outputs:
        output.parameters.pop("binary_data", None)
    response = predict(model, request)
    encoded, _ = encode_response(response, request=request)
    result: dict[str, Any] = orjson.loads(encoded)
    return result
