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
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from shipyard.codecs.errors import ProtocolError
from shipyard.codecs.limits import (
    DEFAULT_LIMITS,
    DecodeLimits,
    check_bytes_element,
    check_elements,
    check_json_depth,
    check_request_elements,
)
from shipyard.codecs.tensors import array_from_json
from shipyard.codecs.types import InferenceRequest
from shipyard.package.tensorspec import TensorSpec

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
_DUMP = orjson.OPT_SERIALIZE_NUMPY
_MAX_DEPTH = 32

TF_DTYPES: dict[str, str] = {
    "bool": "DT_BOOL",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "float16": "DT_HALF",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "str": "DT_STRING",
}
"""Shipyard tensor dtype -> TensorFlow DataType enum name."""


@dataclass(frozen=True)
class PredictRequest:
    """A decoded predict body: the tensors and how the answer must be shaped."""

    request: InferenceRequest
    format: Literal["row", "columnar"]
    rows: int = 0
    """Number of instances (row format); every output must have this many rows."""


# -- predict ------------------------------------------------------------------------------


def decode_predict(
    body: bytes, *, inputs: Sequence[TensorSpec], limits: DecodeLimits = DEFAULT_LIMITS
) -> PredictRequest:
    """A predict body as tensors typed by the model's `inputs`, within `limits`."""
    doc = load_object(body, what="predict request")
    check_json_depth(doc, limits, what="predict request")
    unknown = sorted(set(doc) - {"signature_name", "instances", "inputs"})
    if unknown:
        raise ProtocolError(
            f"predict request has unknown key(s) {unknown}; send "
            '{"instances": [...]} (row format) or {"inputs": ...} (columnar format)'
        )
    check_signature_name(doc)
    if ("instances" in doc) == ("inputs" in doc):
        raise ProtocolError(
            'predict request needs exactly one of "instances" (row format) or "inputs" '
            "(columnar format)"
        )
    by_name = {spec.name: spec for spec in inputs}
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
            return _dump({"outputs": array_to_value(array, name=name)})
        return _dump({"outputs": {n: array_to_value(a, name=n) for n, a in outputs.items()}})
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != decoded.rows:
            raise ProtocolError(
                f"output {name!r} has shape {list(array.shape)}, not one row per instance "
                f'({decoded.rows}); send the columnar format {{"inputs": ...}} instead'
            )
    if len(outputs) == 1:
        ((name, array),) = outputs.items()
        return _dump({"predictions": array_to_value(array, name=name)})
    values = {n: array_to_value(a, name=n) for n, a in outputs.items()}
    predictions = [{n: v[row] for n, v in values.items()} for row in range(decoded.rows)]
    return _dump({"predictions": predictions})


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


def _is_named(value: Any, by_name: Mapping[str, TensorSpec]) -> bool:
    """An {input: value} object, as opposed to a value (a b64 object is a value)."""
    return isinstance(value, dict) and not (_is_b64(value) and "b64" not in by_name)


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


# -- values <-> arrays --------------------------------------------------------------------


def value_to_array(
    value: Any, *, spec: TensorSpec, what: str, limits: DecodeLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """A JSON value (nested lists, scalars, b64 objects) as a tensor of `spec`'s dtype."""
    what = f"input {what!r}"
    shape = _shape_of(value, what=what)
    check_elements(shape, limits, what=what)
    if spec.dtype == "str":
        flat: list[str | bytes] = []
        _flatten_strings(value, flat, what=what)
        for item in flat:
            if len(item) * 4 > limits.max_bytes_element:  # UTF-8: at most 4 bytes a char
                size = len(item if isinstance(item, bytes) else item.encode("utf-8", "replace"))
                check_bytes_element(size, limits, what=what)
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    if _contains_object(value):
        raise ProtocolError(
            f"{what}: holds an object where a number belongs; the input is {spec.dtype} "
            '({"b64": ...} values are only for string inputs)'
        )
    return array_from_json(value, datatype=spec.v2_datatype, shape=shape, what=what, limits=limits)


def array_to_value(array: np.ndarray, *, name: str) -> Any:
    """A tensor as a JSON-ready value (numpy numbers go to orjson as they are)."""
    if array.dtype.kind in "OUS":
        binary = name.endswith("_bytes")
        flat = [_string_value(x, binary=binary) for x in array.reshape(-1).tolist()]
        return _nest(flat, array.shape)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.ndim == 0:
        return array.reshape(1)[0]
    return np.ascontiguousarray(array)


def _shape_of(value: Any, *, what: str, depth: int = 0) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    if depth >= _MAX_DEPTH:
        raise ProtocolError(f"{what}: value is nested more than {_MAX_DEPTH} levels deep")
    if not value:
        return (0,)
    inner = _shape_of(value[0], what=what, depth=depth + 1)
    for item in value[1:]:
        if _shape_of(item, what=what, depth=depth + 1) != inner:
            raise ProtocolError(
                f"{what}: value is ragged (lists at the same depth differ in length); "
                "every row must have the same shape"
            )
    return (len(value), *inner)


def _flatten_strings(value: Any, out: list[str | bytes], *, what: str) -> None:
    if isinstance(value, list):
        for item in value:
            _flatten_strings(item, out, what=what)
    elif isinstance(value, str):
        out.append(value)
    elif _is_b64(value):
        out.append(_b64decode(value["b64"], what=what))
    else:
        raise ProtocolError(
            f'{what}: string input values must be strings or {{"b64": "..."}}, found '
            f"{type(value).__name__}"
        )


def _contains_object(value: Any) -> bool:
    if isinstance(value, list):
        return any(_contains_object(v) for v in value)
    return isinstance(value, dict)


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _b64decode(text: Any, *, what: str) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError(f'{what}: "b64" must hold a base64 string')
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f'{what}: "b64" is not valid base64 ({exc})') from None


def _string_value(value: Any, *, binary: bool) -> Any:
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
    if not binary:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(raw).decode("ascii")}


def _nest(flat: list[Any], shape: tuple[int, ...]) -> Any:
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


# -- classify and regress -----------------------------------------------------------------


def decode_examples(
    body: bytes,
    *,
    spec: TensorSpec,
    feature_names: Sequence[str] | None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """Classify/regress `examples` (+ `context`) as one `[examples, features]` matrix.

    An example is `{feature: value, ...}` (names from the model's `feature_names`, values
    numbers or one-element lists, `context` features shared by every example), or the
    whole row as `{"<input name>" | "x": [v1, ..., vF]}` or a plain list `[v1, ..., vF]`.
    """
    doc = load_object(body, what="request")
    check_json_depth(doc, limits, what="request")
    unknown = sorted(set(doc) - {"signature_name", "context", "examples"})
    if unknown:
        raise ProtocolError(
            f'request has unknown key(s) {unknown}; send {{"examples": [...], "context"?: {{...}}}}'
        )
    check_signature_name(doc)
    examples = doc.get("examples")
    if not isinstance(examples, list) or not examples:
        raise ProtocolError('"examples" must be a non-empty list of {feature: value} objects')
    context = doc.get("context", {})
    if not isinstance(context, dict):
        raise ProtocolError('"context" must be an object {feature: value, ...}')
    if len(spec.shape) != 2:
        raise ProtocolError(
            f"the model's input {spec.describe()} is not a [rows, features] matrix, so it "
            "cannot take examples; use :predict"
        )
    rows = [
        _example_row(item, context, spec=spec, feature_names=feature_names, position=i)
        for i, item in enumerate(examples)
    ]
    width = len(rows[0])
    expected = spec.shape[1]
    for position, row in enumerate(rows):
        if len(row) != width or (expected != -1 and len(row) != expected):
            raise ProtocolError(
                f"example #{position} has {len(row)} values; the model takes "
                f"{expected if expected != -1 else width} features per example"
            )
    shape = (len(rows), width)
    check_request_elements(check_elements(shape, limits, what="examples"), limits)
    return array_from_json(rows, datatype=spec.v2_datatype, shape=shape, what="examples")


def _example_row(
    item: Any,
    context: dict[str, Any],
    *,
    spec: TensorSpec,
    feature_names: Sequence[str] | None,
    position: int,
) -> list[Any]:
    what = f"example #{position}"
    whole_row = _whole_row(item, spec=spec, feature_names=feature_names, what=what)
    if whole_row is not None:
        if context:
            raise ProtocolError(
                '"context" needs examples as {feature: value} objects (and a model with '
                "feature_names in its metadata)"
            )
        return [_feature_value(v, what=f"{what} value #{i}") for i, v in enumerate(whole_row)]
    if not feature_names:
        raise ProtocolError(
            f"{what}: the model lists no feature_names in its metadata, so each example must "
            f'carry the whole row: {{"x": [v1, ..., vN]}}'
        )
    shared = sorted(set(item) & set(context))
    if shared:
        raise ProtocolError(f"{what}: feature(s) {shared} are also in the context")
    features = {**context, **item}
    missing = [f for f in feature_names if f not in features]
    unknown = sorted(set(features) - set(feature_names))
    if missing or unknown:
        problems = [f"misses {missing}"] if missing else []
        problems += [f"has unknown {unknown}"] if unknown else []
        raise ProtocolError(
            f"{what} {' and '.join(problems)}; the model's features are {list(feature_names)}"
        )
    return [_feature_value(features[f], what=f"{what} feature {f!r}") for f in feature_names]


def _whole_row(
    item: Any, *, spec: TensorSpec, feature_names: Sequence[str] | None, what: str
) -> list[Any] | None:
    """The row of a `[v1, ...]` or `{"x" | input: [v1, ...]}` example; None for features."""
    if isinstance(item, list):
        return item
    if not isinstance(item, dict):
        raise ProtocolError(f"{what} must be an object {{feature: value, ...}} or a list")
    if len(item) != 1:
        return None
    ((key, value),) = item.items()
    if key not in (spec.name, "x") or (feature_names and key in feature_names):
        return None
    if not isinstance(value, list):
        raise ProtocolError(f"{what}: {key!r} must be a list of feature values")
    return value


def _feature_value(value: Any, *, what: str) -> Any:
    """A number, or a tf.Example-style one-element list holding it."""
    if isinstance(value, list):
        if len(value) != 1:
            raise ProtocolError(f"{what}: a feature takes one value, got a list of {len(value)}")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{what}: must be a number, got {type(value).__name__}")
    return value


def encode_classify(scores: np.ndarray, *, labels: Sequence[str]) -> bytes:
    """`{"result": [[[label, score], ...], ...]}`: every class with its score, per example."""
    rows = np.ascontiguousarray(scores)
    return _dump({"result": [list(zip(labels, row, strict=True)) for row in rows]})


def encode_regress(values: np.ndarray) -> bytes:
    """`{"result": [value, ...]}`: one number per example."""
    return _dump({"result": np.ascontiguousarray(values).reshape(-1)})


# -- metadata and shared helpers ----------------------------------------------------------


def tensor_info(spec: TensorSpec) -> dict[str, Any]:
    """TF Serving's TensorInfo JSON: dtype enum name and shape (-1 = any size)."""
    return {
        "dtype": TF_DTYPES[spec.dtype],
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


def load_object(body: bytes, *, what: str) -> dict[str, Any]:
    """The body as a JSON object, or a ProtocolError saying why not."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def _dump(doc: Any) -> bytes:
    return orjson.dumps(doc, option=_DUMP, default=_numpy_default)


def _numpy_default(value: Any) -> Any:
    """What orjson cannot write natively: numpy scalar aliases (longlong) and strided arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.flags.c_contiguous else np.ascontiguousarray(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
