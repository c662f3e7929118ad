"""TF Serving classify and regress: `examples` (+ `context`) in, one result per example out.

Examples become one feature matrix for a model taking a single `[rows, features]` input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shipyard.codecs.errors import ProtocolError
from shipyard.codecs.limits import (
    DEFAULT_LIMITS,
    DecodeLimits,
    check_elements,
    check_request_elements,
)
from shipyard.codecs.tensors import array_from_json
from shipyard.codecs.tfserving_signature import load_request
from shipyard.codecs.tfserving_values import dump_body
from shipyard.package.tensorspec import TensorSpec


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
    doc = load_request(
        body,
        what="request",
        keys=("context", "examples"),
        usage='{"examples": [...], "context"?: {...}}',
        limits=limits,
    )
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
    return dump_body({"result": [list(zip(labels, row, strict=True)) for row in rows]})


def encode_regress(values: np.ndarray) -> bytes:
    """`{"result": [value, ...]}`: one number per example."""
    return dump_body({"result": np.ascontiguousarray(values).reshape(-1)})
