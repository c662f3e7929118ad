"""Import scikit-learn estimators and pipelines with skl2onnx; .skops files load safely."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.base import BaseEstimator, is_classifier, is_outlier_detector, is_regressor

from shipyard.errors import ConversionError, UnsafePickleError, UnsupportedModelError, UsageError
from shipyard.importers.base import Converted
from shipyard.importers.boosters import register_converters, require_onnxmltools, uses_boosters
from shipyard.importers.graph_names import rename_value
from shipyard.importers.sklearn_frames import columns_for, wants_columns

DEFAULT_OPSET = 17


def is_sklearn(obj: object) -> bool:
    return isinstance(obj, BaseEstimator)


def load_skops(path: Path, *, extra_allowed: Iterable[str] = ()) -> Any:
    """Load a .skops file; types outside skops' trusted defaults must be allowed explicitly."""
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=str(path))
    except Exception as exc:
        raise UnsupportedModelError(f"{path}: not a readable .skops file ({exc})") from exc
    from shipyard.safepickle.allowlist import global_refusal

    # skops distrusts some scikit-learn internals (e.g. sklearn.tree._tree.Tree) that our
    # reviewed pickle allowlist accepts; anything else must be allowed by the user.
    extra = frozenset(extra_allowed)
    refused = [
        t for t in untrusted if "." not in t or global_refusal(*t.rsplit(".", 1), extra=extra)
    ]
    if refused:
        raise UnsafePickleError(
            f"{path}: contains types skops does not trust by default: {refused}; review them "
            "and pass --allow-global for each one you trust"
        )
    return sio.load(str(path), trusted=list(untrusted))


def _final_step(estimator: Any) -> Any:
    steps = getattr(estimator, "steps", None)
    return _final_step(steps[-1][1]) if steps else estimator


def convert(
    estimator: Any,
    *,
    sample: Any = None,
    opset: int | None = None,
) -> Converted:
    """Convert a fitted estimator; classifiers expose `label` and `probabilities` tensors.

    `sample` is a matrix (one input `X`), or a DataFrame / {column: array} (one input per
    column, named as the column); an estimator fitted on a DataFrame always takes columns.
    """
    from skl2onnx import __version__ as skl2onnx_version
    from skl2onnx.common.data_types import (
        FloatTensorType,
        Int64TensorType,
        StringTensorType,
    )

    if uses_boosters(estimator):
        require_onnxmltools()
        register_converters()
    final = _final_step(estimator)
    reference: Any
    if wants_columns(estimator, sample):
        columns = columns_for(estimator, sample)
        types = {"float": FloatTensorType, "int": Int64TensorType, "str": StringTensorType}
        initial = [(name, types[kind]([None, 1])) for name, kind in columns.kinds.items()]
        feed, reference = columns.feed, columns.reference
    else:
        x32 = _matrix(estimator, sample)
        initial = [("X", FloatTensorType([None, x32.shape[1]]))]
        feed, reference = {"X": x32}, x32.astype(np.float64)
    frame = reference if len(initial) > 1 else None
    proto = _to_onnx(estimator, initial, final=final, opset=opset, reference=frame)
    produced = [o.name for o in proto.graph.output]
    expected, metadata = _expected(estimator, final, produced, reference)
    _keep_input_names(proto, list(feed))
    renamed = dict(zip(produced, (o.name for o in proto.graph.output), strict=True))
    metadata["estimator"] = type(estimator).__name__
    return Converted(
        model=proto,
        framework="scikit-learn",
        framework_version=sklearn.__version__,
        converter="skl2onnx",
        converter_version=skl2onnx_version,
        sample=feed,
        expected={renamed[name]: value for name, value in expected.items()},
        metadata=metadata,
    )


def _matrix(estimator: Any, sample: Any) -> np.ndarray:
    if isinstance(sample, Mapping):
        if len(sample) != 1:
            raise UsageError("scikit-learn models take one input matrix; pass a single array")
        sample = next(iter(sample.values()))
    if sample is None:
        n_features = getattr(estimator, "n_features_in_", None)
        if n_features is None:
            raise UsageError(
                "cannot tell this estimator's input width; pass sample_input (a few rows of X)"
            )
        sample = np.random.default_rng(0).standard_normal((16, int(n_features)))
    x = np.asarray(sample)
    if x.ndim != 2:
        raise UsageError(
            f"sample input must be a 2-D matrix (rows × features), got shape {x.shape}"
        )
    if x.dtype.kind not in "biuf":
        raise UnsupportedModelError(
            f"sample input has dtype {x.dtype}; pass a DataFrame to give string columns "
            "(one model input per column), or a numeric matrix"
        )
    return x.astype(np.float32)


def _to_onnx(
    estimator: Any,
    initial: list[tuple[str, Any]],
    *,
    final: Any,
    opset: int | None,
    reference: Any = None,
) -> Any:
    """Convert; `reference` (a frame) means one input per column."""
    from skl2onnx import to_onnx
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if reference is not None and not isinstance(estimator, Pipeline | ColumnTransformer):
        # Most skl2onnx converters read one matrix: a passthrough step concatenates columns.
        merge = ColumnTransformer([("columns", "passthrough", list(reference.columns))])
        estimator = Pipeline([("columns", merge.fit(reference)), ("model", estimator)])
    options: dict[int, dict[str, Any]] = {}
    if is_classifier(final):
        options[id(final)] = {"zipmap": False}
    try:
        return to_onnx(
            estimator,
            initial_types=initial,
            target_opset={"": opset or DEFAULT_OPSET, "ai.onnx.ml": 3},
            options=options or None,
        )
    except Exception as exc:
        raise ConversionError(
            f"skl2onnx cannot convert {type(estimator).__name__}: {_one_line(exc)}"
        ) from exc


def _expected(
    estimator: Any, final: Any, outputs: list[str], reference: Any
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The original's outputs keyed by skl2onnx's output names, each from the right method."""
    expected: dict[str, np.ndarray] = {}
    metadata: dict[str, Any] = {}
    rows = len(reference)
    if is_classifier(final):
        expected[outputs[0]] = np.asarray(estimator.predict(reference))
        metadata["classes"] = [_plain(c) for c in final.classes_]
        if len(outputs) > 1:
            scores = _scores(estimator, reference)
            if scores is not None and scores.size == rows * len(final.classes_):
                expected[outputs[1]] = scores
        metadata["task"] = "classification"
        return expected, metadata
    if hasattr(estimator, "predict"):
        expected[outputs[0]] = np.asarray(estimator.predict(reference))
        metadata["task"] = "regression" if is_regressor(final) else "predict"
        if len(outputs) > 1:
            method = _second_output_method(estimator, final, outputs[1])
            if method is not None:
                expected[outputs[1]] = np.asarray(getattr(estimator, method)(reference))
                metadata["task"] = {
                    "decision_function": "outlier_detection",
                    "transform": "clustering",
                }.get(method, "predict")
        return expected, metadata
    if hasattr(estimator, "transform"):
        expected[outputs[0]] = np.asarray(estimator.transform(reference))
        metadata["task"] = "transform"
    return expected, metadata


def _second_output_method(estimator: Any, final: Any, name: str) -> str | None:
    """skl2onnx's second output: `probabilities` (mixtures), `scores` (detectors, KMeans)."""
    if name.startswith("probabilities") and hasattr(estimator, "predict_proba"):
        return "predict_proba"
    if name.startswith("scores"):
        if is_outlier_detector(final) and hasattr(estimator, "decision_function"):
            return "decision_function"
        if hasattr(estimator, "transform"):
            return "transform"
        if hasattr(estimator, "decision_function"):
            return "decision_function"
    return None


def _keep_input_names(proto: Any, names: list[str]) -> None:
    """Inputs named as the user's columns; an output sharing a column's name gets `output_`."""
    graph = proto.graph
    wanted = set(names)
    for output in list(graph.output):
        if output.name in wanted:
            rename_value(graph, output.name, f"output_{output.name}")
    for index, name in enumerate(names):
        rename_value(graph, graph.input[index].name, name)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _scores(estimator: Any, x: Any) -> np.ndarray | None:
    try:
        return np.asarray(estimator.predict_proba(x))
    except (AttributeError, NotImplementedError):
        return None


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
