"""Import scikit-learn estimators and pipelines with skl2onnx; .skops files load safely."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.base import BaseEstimator, is_classifier, is_regressor

from shipyard.errors import ConversionError, UnsafePickleError, UnsupportedModelError, UsageError
from shipyard.importers.base import Converted

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
    from shipyard.package.pickle_allowlist import global_refusal

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
    sample: dict[str, np.ndarray] | np.ndarray | None = None,
    opset: int | None = None,
) -> Converted:
    """Convert a fitted estimator; classifiers expose `label` and `probabilities` tensors."""
    from skl2onnx import __version__ as skl2onnx_version
    from skl2onnx import to_onnx

    if isinstance(sample, dict):
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
            f"sample input has dtype {x.dtype}; Shipyard converts numeric scikit-learn inputs "
            "(encode strings inside the pipeline with OneHotEncoder on numeric codes)"
        )
    x32 = x.astype(np.float32)
    final = _final_step(estimator)
    options: dict[int, dict[str, Any]] = {}
    if is_classifier(final):
        options[id(final)] = {"zipmap": False}
    try:
        proto = to_onnx(
            estimator,
            x32[:1],
            target_opset={"": opset or DEFAULT_OPSET, "ai.onnx.ml": 3},
            options=options or None,
        )
    except Exception as exc:
        raise ConversionError(f"skl2onnx cannot convert {type(estimator).__name__}: {exc}") from exc
    _rename_first_input(proto, "X")
    reference = x32.astype(np.float64)
    outputs = [o.name for o in proto.graph.output]
    expected: dict[str, np.ndarray] = {}
    metadata: dict[str, Any] = {"estimator": type(estimator).__name__}
    if is_classifier(final):
        expected[outputs[0]] = np.asarray(estimator.predict(reference))
        metadata["classes"] = [_plain(c) for c in final.classes_]
        if len(outputs) > 1:
            scores = _scores(estimator, reference)
            if scores is not None and scores.size == len(x) * len(final.classes_):
                expected[outputs[1]] = scores
        metadata["task"] = "classification"
    elif hasattr(estimator, "predict") and not hasattr(estimator, "transform"):
        expected[outputs[0]] = np.asarray(estimator.predict(reference))
        metadata["task"] = "regression" if is_regressor(final) else "predict"
    elif hasattr(estimator, "transform"):
        expected[outputs[-1] if len(outputs) == 1 else outputs[0]] = np.asarray(
            estimator.transform(reference)
        )
        metadata["task"] = "transform"
    return Converted(
        model=proto,
        framework="scikit-learn",
        framework_version=sklearn.__version__,
        converter="skl2onnx",
        converter_version=skl2onnx_version,
        sample={"X": x32},
        expected=expected,
        metadata=metadata,
    )


def _scores(estimator: Any, x: np.ndarray) -> np.ndarray | None:
    try:
        return np.asarray(estimator.predict_proba(x))
    except (AttributeError, NotImplementedError):
        return None


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _rename_first_input(proto: Any, new: str) -> None:
    old = proto.graph.input[0].name
    if old == new:
        return
    proto.graph.input[0].name = new
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
