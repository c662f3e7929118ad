"""TF Serving's one served signature: its metadata and the request envelope that names it."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from shipyard.codecs.errors import ProtocolError
from shipyard.codecs.jsonbody import load_object
from shipyard.codecs.limits import DecodeLimits, check_json_depth
from shipyard.package.dtypes import BY_NAME
from shipyard.package.tensorspec import TensorSpec

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"


def tensor_info(spec: TensorSpec) -> dict[str, Any]:
    """TF Serving's TensorInfo JSON: dtype enum name and shape (-1 = any size)."""
    return {
        "dtype": BY_NAME[spec.dtype].tf,
        "tensor_shape": {
            "dim": [{"size": str(d), "name": ""} for d in spec.shape],
            "unknown_rank": False,
        },
        "name": spec.name,
    }


def signature_def(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> dict[str, Any]:
    """The `signature_def` map with the one predict signature Shipyard serves."""
    return {
        "signature_def": {
            DEFAULT_SIGNATURE: {
                "inputs": {s.name: tensor_info(s) for s in inputs},
                "outputs": {s.name: tensor_info(s) for s in outputs},
                "method_name": PREDICT_METHOD,
            }
        }
    }


def check_signature_name(doc: Mapping[str, Any]) -> None:
    name = doc.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(name, str) or name not in ("", DEFAULT_SIGNATURE):
        raise ProtocolError(
            f"signature_name {name!r} is not served; models have one signature, "
            f'"{DEFAULT_SIGNATURE}" (omit signature_name to use it)'
        )


def load_request(
    body: bytes, *, what: str, keys: Collection[str], usage: str, limits: DecodeLimits
) -> dict[str, Any]:
    """The body as a JSON object within `limits`, holding only `keys` and an optional
    signature_name that must be the served one; `usage` says what to send instead."""
    doc = load_object(body, what=what)
    check_json_depth(doc, limits, what=what)
    unknown = sorted(set(doc) - {"signature_name", *keys})
    if unknown:
        raise ProtocolError(f"{what} has unknown key(s) {unknown}; send {usage}")
    check_signature_name(doc)
    return doc
