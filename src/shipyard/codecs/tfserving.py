"""TensorFlow Serving REST bodies: predict (row and columnar), classify/regress, metadata.

Server side only, strictly checked against the model's signature (every mismatch is a
`ProtocolError`, HTTP 400):

- `decode_predict` reads `{"instances": [...]}` (row format: one value per row for a
  single-input model, else one `{input: value}` object per row, stacked along a new first
  dimension) or `{"inputs": value | {input: value}}` (columnar). Element types come from
  the signature, never from the JSON; binary strings arrive as `{"b64": "..."}`.
- `encode_predict` writes `{"predictions": [...]}` (a `{output: value}` object per row only
  when there are several outputs) or `{"outputs": value | {output: value}}`. String
  outputs whose name ends in `_bytes`, or that are not UTF-8, go out as `{"b64": "..."}`
  (TF Serving's rule).
- `decode_examples` turns classify/regress `examples` (+ `context`) into one feature
  matrix for a model taking a single `[rows, features]` input.
- `signature_def` describes inputs and outputs as TF Serving's model metadata does.

Predict lives here; classify/regress in `tfserving_examples`, value conversion in
`tfserving_values` and the signature in `tfserving_signature`, all re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from shipyard.codecs.errors import ProtocolError
from shipyard.codecs.jsonbody import load_object
from shipyard.codecs.limits import DEFAULT_LIMITS, DecodeLimits, check_request_elements
from shipyard.codecs.tfserving_examples import decode_examples, encode_classify, encode_regress
from shipyard.codecs.tfserving_signature import (
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    check_signature_name,
    load_request,
    signature_def,
    tensor_info,
)
from shipyard.codecs.tfserving_values import array_to_value, dump_body, is_b64, value_to_array
from shipyard.codecs.types import InferenceRequest
from shipyard.package.tensorspec import TensorSpec

__all__ = [
    "DEFAULT_SIGNATURE",
    "PREDICT_METHOD",
    "PredictRequest",
    "array_to_value",
    "check_signature_name",
    "decode_examples",
    "decode_predict",
    "encode_classify",
    "encode_predict",
    "encode_regress",
    "load_object",
    "signature_def",
    "tensor_info",
    "value_to_array",
]


@dataclass(frozen=True)
class PredictRequest:
    """A decoded predict body: the tensors and how the answer must be shaped."""

    request: InferenceRequest
    format: Literal["row", "columnar"]
    rows: int = 0
    """Number of instances (row format); every output must have this many rows."""


def decode_predict(
    body: bytes,
    *,
    inputs: Sequence[TensorSpec],
    limits: DecodeLimits = DEFAULT_LIMITS,
    processed: Sequence[TensorSpec] = (),
) -> PredictRequest:
    """A predict body as tensors typed by the model's `inputs`, within `limits`.

    `processed` are inputs the server processes (a `text` BYTES input): a body addressing
    them (plain strings for a single one, or objects naming them) is typed by them instead,
    so `{"instances": ["hello", "world"]}` reaches a text model.
    """
    doc = load_request(
        body,
        what="predict request",
        keys=("instances", "inputs"),
        usage='{"instances": [...]} (row format) or {"inputs": ...} (columnar format)',
        limits=limits,
    )
    if ("instances" in doc) == ("inputs" in doc):
        raise ProtocolError(
            'predict request needs exactly one of "instances" (row format) or "inputs" '
            "(columnar format)"
        )
    by_name = {spec.name: spec for spec in inputs}
    if processed:
        payload = doc.get("instances", doc.get("inputs"))
        if _addresses(payload, {spec.name for spec in processed}, rows="instances" in doc):
            by_name = {spec.name: spec for spec in processed}
    if "instances" in doc:
        tensors, rows = _decode_rows(doc["instances"], by_name, limits)
        return PredictRequest(InferenceRequest(inputs=tensors), "row", rows)
    tensors = _decode_columns(doc["inputs"], by_name, limits)
    return PredictRequest(InferenceRequest(inputs=tensors), "columnar")


def encode_predict(outputs: Mapping[str, np.ndarray], *, decoded: PredictRequest) -> bytes:
    """The predict response body for `outputs`, in the request's format."""
    if decoded.format == "columnar":
        if len(outputs) == 1:
            ((name, array),) = outputs.items()
            return dump_body({"outputs": array_to_value(array, name=name)})
        return dump_body({"outputs": {n: array_to_value(a, name=n) for n, a in outputs.items()}})
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != decoded.rows:
            raise ProtocolError(
                f"output {name!r} has shape {list(array.shape)}, not one row per instance "
                f'({decoded.rows}); send the columnar format {{"inputs": ...}} instead'
            )
    if len(outputs) == 1:
        ((name, array),) = outputs.items()
        return dump_body({"predictions": array_to_value(array, name=name)})
    values = {n: array_to_value(a, name=n) for n, a in outputs.items()}
    predictions = [{n: v[row] for n, v in values.items()} for row in range(decoded.rows)]
    return dump_body({"predictions": predictions})


def _decode_rows(
    instances: Any, by_name: Mapping[str, TensorSpec], limits: DecodeLimits
) -> tuple[dict[str, np.ndarray], int]:
    if not isinstance(instances, list) or not instances:
        raise ProtocolError('"instances" must be a non-empty list, one entry per row')
    named = [_is_named(item, by_name) for item in instances]
    if any(named) and not all(named):
        raise ProtocolError(
            '"instances" mixes {input: value} objects and plain values; use one form for all rows'
        )
    if not named[0]:
        if len(by_name) != 1:
            raise ProtocolError(
                f"the model takes {len(by_name)} inputs {sorted(by_name)}; send each instance "
                "as an object {input: value, ...}"
            )
        (spec,) = by_name.values()
        array = value_to_array(instances, spec=spec, what=spec.name, limits=limits)
        return {spec.name: array}, len(instances)
    for row, item in enumerate(instances):
        _check_keys(item, by_name, what=f"instance #{row}")
    columns = {name: [item[name] for item in instances] for name in by_name}
    return _arrays(columns, by_name, limits), len(instances)


def _decode_columns(
    value: Any, by_name: Mapping[str, TensorSpec], limits: DecodeLimits
) -> dict[str, np.ndarray]:
    if not _is_named(value, by_name):
        if len(by_name) != 1:
            raise ProtocolError(
                f"the model takes {len(by_name)} inputs {sorted(by_name)}; send "
                '"inputs" as an object {input: value, ...}'
            )
        (spec,) = by_name.values()
        return {spec.name: value_to_array(value, spec=spec, what=spec.name, limits=limits)}
    _check_keys(value, by_name, what='"inputs"')
    return _arrays(value, by_name, limits)


def _arrays(
    values: Mapping[str, Any], by_name: Mapping[str, TensorSpec], limits: DecodeLimits
) -> dict[str, np.ndarray]:
    tensors, total = {}, 0
    for name, spec in by_name.items():
        tensors[name] = value_to_array(values[name], spec=spec, what=name, limits=limits)
        total += tensors[name].size
        check_request_elements(total, limits)
    return tensors


def _addresses(payload: Any, names: set[str], *, rows: bool) -> bool:
    """Whether a predict payload is meant for the processed inputs `names`."""
    first = payload[0] if rows and isinstance(payload, list) and payload else payload
    if isinstance(first, dict) and not is_b64(first):
        return bool(first) and set(first) <= names
    if len(names) != 1:
        return False
    if rows:
        return isinstance(first, str) or is_b64(first)
    return (
        isinstance(first, list) and bool(first) and (isinstance(first[0], str) or is_b64(first[0]))
    )


def _is_named(value: Any, by_name: Mapping[str, TensorSpec]) -> bool:
    """An {input: value} object, as opposed to a value (a b64 object is a value)."""
    return isinstance(value, dict) and not (is_b64(value) and "b64" not in by_name)


def _check_keys(item: Any, by_name: Mapping[str, TensorSpec], *, what: str) -> None:
    if not isinstance(item, dict):
        raise ProtocolError(f"{what} must be an object {{input: value, ...}}")
    missing = [n for n in by_name if n not in item]
    unknown = sorted(set(item) - set(by_name))
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"misses input(s) {missing}")
        if unknown:
            problems.append(f"has unknown input(s) {unknown}")
        raise ProtocolError(f"{what} {' and '.join(problems)}; the model takes {list(by_name)}")
