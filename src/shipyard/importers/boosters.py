"""Gradient-boosted trees: XGBoost, LightGBM (via onnxmltools) and CatBoost (its own export).

The scikit-learn wrappers (XGBClassifier, LGBMRegressor ...) convert through skl2onnx, so
they also work inside Pipelines: `register_converters` adds onnxmltools' converters to
skl2onnx, the documented way. Native boosters (xgboost.Booster, lightgbm.Booster) take one
float32 matrix `X`; onnxmltools writes at most opset 15 for them. CatBoost models are
saved with `save_model(format="onnx")`, which supports numeric features only.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from shipyard.errors import ConversionError, UnsupportedModelError, UsageError
from shipyard.importers.base import Converted

BOOST_EXTRA = "pip install 'shipyard[boost]'"
NATIVE_MAX_OPSET = 15
_registered = False


def _root(obj: object) -> str:
    return type(obj).__module__.split(".")[0]


def is_native_booster(obj: object) -> bool:
    return _root(obj) in ("xgboost", "lightgbm") and type(obj).__name__ == "Booster"


def is_catboost(obj: object) -> bool:
    return _root(obj) == "catboost" and hasattr(obj, "save_model")


def uses_boosters(estimator: Any) -> bool:
    """Whether a scikit-learn estimator or pipeline has an XGBoost / LightGBM step."""
    if _root(estimator) in ("xgboost", "lightgbm"):
        return True
    steps = [s for _, s, *_ in getattr(estimator, "steps", None) or []]
    steps += [s for _, s, *_ in getattr(estimator, "transformers_", None) or []]
    return any(uses_boosters(s) for s in steps if not isinstance(s, str))


def register_converters() -> None:
    """Teach skl2onnx the XGBoost / LightGBM scikit-learn wrappers (once per process)."""
    global _registered
    if _registered:
        return
    try:
        from skl2onnx import update_registered_converter
        from skl2onnx.common.shape_calculator import (
            calculate_linear_classifier_output_shapes,
            calculate_linear_regressor_output_shapes,
        )
    except ImportError as exc:  # pragma: no cover - skl2onnx is a core dependency
        raise UnsupportedModelError(f"skl2onnx is missing ({exc}); reinstall shipyard") from exc
    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        import xgboost
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

        update_registered_converter(
            xgboost.XGBClassifier,
            "XGBoostXGBClassifier",
            calculate_linear_classifier_output_shapes,
            convert_xgboost,
            options=classifier_options,
        )
        update_registered_converter(
            xgboost.XGBRegressor,
            "XGBoostXGBRegressor",
            calculate_linear_regressor_output_shapes,
            convert_xgboost,
        )
    except ImportError:
        pass
    try:
        import lightgbm
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(
            lightgbm.LGBMClassifier,
            "LightGbmLGBMClassifier",
            calculate_linear_classifier_output_shapes,
            convert_lightgbm,
            options=classifier_options,
        )
        update_registered_converter(
            lightgbm.LGBMRegressor,
            "LightGbmLGBMRegressor",
            calculate_linear_regressor_output_shapes,
            convert_lightgbm,
        )
    except ImportError:
        pass
    _registered = True


def require_onnxmltools() -> str:
    try:
        import onnxmltools
    except ImportError as exc:
        raise UnsupportedModelError(
            f"converting XGBoost / LightGBM models needs onnxmltools; {BOOST_EXTRA}"
        ) from exc
    return str(onnxmltools.__version__)


def convert_native(booster: Any, *, sample: Any = None, opset: int | None = None) -> Converted:
    """Convert an xgboost.Booster or lightgbm.Booster; one float32 input `X`."""
    version = require_onnxmltools()
    from onnxmltools import convert_lightgbm, convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    xgb = _root(booster) == "xgboost"
    width = int(booster.num_features() if xgb else booster.num_feature())
    x = _matrix(sample, width)
    types = [("X", FloatTensorType([None, width]))]
    target = min(opset or NATIVE_MAX_OPSET, NATIVE_MAX_OPSET)
    try:
        if xgb:
            proto = convert_xgboost(booster, initial_types=types, target_opset=target)
        else:
            proto = convert_lightgbm(
                booster, initial_types=types, target_opset=target, zipmap=False
            )
    except Exception as exc:
        raise ConversionError(
            f"onnxmltools cannot convert this {_root(booster)}.Booster: {exc}"
        ) from exc
    if xgb:
        import xgboost

        raw = np.asarray(booster.predict(xgboost.DMatrix(x)))
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    else:
        raw = np.asarray(booster.predict(x))
        objective = str(booster.params.get("objective", ""))
    outputs = [o.name for o in proto.graph.output]
    expected: dict[str, np.ndarray] = {}
    metadata: dict[str, Any] = {"estimator": f"{_root(booster)}.Booster", "objective": objective}
    if len(outputs) >= 2:
        if objective == "multi:softmax":
            expected[outputs[0]] = raw.astype(np.int64)
        else:
            probabilities = np.column_stack([1 - raw, raw]) if raw.ndim == 1 else raw
            expected[outputs[0]] = probabilities.argmax(axis=1)
            expected[outputs[1]] = probabilities
            metadata["classes"] = list(range(probabilities.shape[1]))
        metadata["task"] = "classification"
    else:
        expected[outputs[0]] = raw
        metadata["task"] = "regression"
    declare_batch_outputs(proto, {"X": x})
    return Converted(
        model=proto,
        framework=_root(booster),
        framework_version=_framework_version(booster),
        converter="onnxmltools",
        converter_version=version,
        sample={"X": x},
        expected=expected,
        metadata=metadata,
    )


def convert_catboost(model: Any, *, sample: Any = None) -> Converted:
    """Convert a CatBoost model with CatBoost's own ONNX export (numeric features only)."""
    if list(model.get_cat_feature_indices()):
        raise UnsupportedModelError(
            "CatBoost exports models with categorical features to ONNX not at all; encode "
            "them as numbers (or use OneHotEncoder + LightGBM/XGBoost in a Pipeline) and refit"
        )
    x = _matrix(sample, len(model.feature_names_))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        try:
            model.save_model(str(path), format="onnx")
        except Exception as exc:
            raise ConversionError(f"CatBoost cannot export this model to ONNX: {exc}") from exc
        proto = onnx.load(str(path))
    _drop_zipmap(proto)
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    expected: dict[str, np.ndarray] = {}
    metadata: dict[str, Any] = {"estimator": type(model).__name__}
    if hasattr(model, "predict_proba") and len(outputs) >= 2:
        expected[outputs[0]] = np.asarray(model.predict(x)).ravel()
        expected[outputs[1]] = np.asarray(model.predict_proba(x))
        metadata["classes"] = [_plain(c) for c in model.classes_]
        metadata["task"] = "classification"
    else:
        expected[outputs[0]] = np.asarray(model.predict(x))
        metadata["task"] = "regression"
    declare_batch_outputs(proto, {inputs[0]: x})
    import catboost

    return Converted(
        model=proto,
        framework="catboost",
        framework_version=str(catboost.__version__),
        converter="catboost",
        converter_version=str(catboost.__version__),
        sample={inputs[0]: x},
        expected=expected,
        metadata=metadata,
    )


def declare_batch_outputs(proto: onnx.ModelProto, feed: dict[str, np.ndarray]) -> None:
    """Declare each output as [N, *what one run gives]: converters declare [1] or [N] wrongly."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    results = session.run(None, feed)
    for output, value in zip(proto.graph.output, results, strict=True):
        shape = output.type.tensor_type.shape
        del shape.dim[:]
        shape.dim.add().dim_param = "N"
        for size in np.shape(value)[1:]:
            shape.dim.add().dim_value = int(size)


def _drop_zipmap(proto: onnx.ModelProto) -> None:
    """Serve probabilities as a [N, classes] tensor instead of a sequence of maps."""
    graph = proto.graph
    for node in list(graph.node):
        if node.op_type != "ZipMap":
            continue
        source, target = node.input[0], node.output[0]
        graph.node.remove(node)
        for other in graph.node:
            for i, name in enumerate(other.output):
                if name == source:
                    other.output[i] = target
        for output in graph.output:
            if output.name == target:
                output.type.CopyFrom(
                    onnx.helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, ["N", None])
                )


def _matrix(sample: Any, width: int) -> np.ndarray:
    if isinstance(sample, dict):
        if len(sample) != 1:
            raise UsageError("boosted-tree models take one input matrix; pass a single array")
        sample = next(iter(sample.values()))
    if sample is None:
        return np.random.default_rng(0).standard_normal((16, width)).astype(np.float32)
    x = np.asarray(sample)
    if x.ndim != 2 or x.shape[1] != width:
        raise UsageError(
            f"sample input must be a [rows, {width}] matrix for this model, got shape "
            f"{list(x.shape)}"
        )
    if x.dtype.kind not in "biuf":
        raise UsageError(f"sample input has dtype {x.dtype}; boosted-tree inputs are numbers")
    return x.astype(np.float32)


def _framework_version(obj: object) -> str:
    import importlib

    return str(getattr(importlib.import_module(_root(obj)), "__version__", "unknown"))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
