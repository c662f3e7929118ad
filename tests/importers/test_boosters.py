"""XGBoost, LightGBM and CatBoost: wrappers (alone and in Pipelines) and native boosters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

import shipyard
from shipyard.errors import UnsupportedModelError

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")
pytest.importorskip("onnxmltools")

RNG = np.random.default_rng(0)
X = RNG.standard_normal((200, 4)).astype(np.float32)
Y_BINARY = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
Y_MULTI = np.digitize(X[:, 0], [-0.5, 0.5]).astype(np.int64)
Y_REG = (2 * X[:, 0] - X[:, 2]).astype(np.float64)

WRAPPERS: dict[str, tuple[Any, np.ndarray]] = {
    "xgb_binary": (lambda: xgb.XGBClassifier(n_estimators=15, max_depth=3), Y_BINARY),
    "xgb_multi": (lambda: xgb.XGBClassifier(n_estimators=15, max_depth=3), Y_MULTI),
    "xgb_regressor": (lambda: xgb.XGBRegressor(n_estimators=15, max_depth=3), Y_REG),
    "lgbm_binary": (lambda: lgb.LGBMClassifier(n_estimators=15, verbose=-1), Y_BINARY),
    "lgbm_multi": (lambda: lgb.LGBMClassifier(n_estimators=15, verbose=-1), Y_MULTI),
    "lgbm_regressor": (lambda: lgb.LGBMRegressor(n_estimators=15, verbose=-1), Y_REG),
}


def _check_against(model: shipyard.Model, original: Any, x: Any, feed: Any) -> None:
    out = model.infer(feed)
    if hasattr(original, "predict_proba"):
        np.testing.assert_array_equal(out["label"], original.predict(x))
        np.testing.assert_allclose(out["probabilities"], original.predict_proba(x), atol=1e-5)
    else:
        (values,) = out.values()
        np.testing.assert_allclose(values.ravel(), original.predict(x), atol=1e-4)


@pytest.mark.parametrize("kind", sorted(WRAPPERS))
def test_sklearn_wrappers_round_trip(kind: str, tmp_path: Path) -> None:
    make, y = WRAPPERS[kind]
    est = make().fit(X, y)
    result = shipyard.pack(est, name=kind, repo=tmp_path, sample_input=X[:50])
    model = shipyard.load(result.path)
    assert [s.describe() for s in model.inputs] == ["X: float32[?, 4]"]
    if hasattr(est, "predict_proba"):
        assert [o.name for o in model.outputs] == ["label", "probabilities"]
        assert result.manifest.conversion_check is not None
        assert result.manifest.conversion_check.compared_outputs == ["label", "probabilities"]
    _check_against(model, est, X, X)


@pytest.mark.parametrize("kind", ["xgb_multi", "lgbm_binary", "lgbm_regressor"])
def test_wrappers_inside_a_dataframe_pipeline(kind: str, tmp_path: Path) -> None:
    make, y = WRAPPERS[kind]
    df = pd.DataFrame({"a": X[:, 0].astype(np.float64), "b": X[:, 1].astype(np.float64)})
    df["shade"] = np.where(X[:, 3] > 0, "dark", "light")
    pre = ColumnTransformer([("cat", OneHotEncoder(), ["shade"])], remainder="passthrough")
    pipe = make_pipeline(pre, make()).fit(df, y)
    result = shipyard.pack(pipe, name=kind, repo=tmp_path, sample_input=df.head(40))
    model = shipyard.load(result.path)
    assert [s.describe() for s in model.inputs] == [
        "a: float32[?, 1]",
        "b: float32[?, 1]",
        "shade: str[?, 1]",
    ]
    feed = {
        "a": df[["a"]].to_numpy(np.float32),
        "b": df[["b"]].to_numpy(np.float32),
        "shade": df[["shade"]].to_numpy(object),
    }
    _check_against(model, pipe, df, feed)


def test_native_xgboost_boosters(tmp_path: Path) -> None:
    cases = [
        ({"objective": "binary:logistic"}, Y_BINARY),
        ({"objective": "multi:softprob", "num_class": 3}, Y_MULTI),
        ({"objective": "reg:squarederror"}, Y_REG),
    ]
    for index, (params, y) in enumerate(cases):
        booster = xgb.train({**params, "max_depth": 3}, xgb.DMatrix(X, label=y), 10)
        result = shipyard.pack(booster, name=f"xgb{index}", repo=tmp_path, sample_input=X)
        model = shipyard.load(result.path)
        raw = booster.predict(xgb.DMatrix(X))
        out = model.infer({"X": X})
        if "probabilities" in out:
            probabilities = np.column_stack([1 - raw, raw]) if raw.ndim == 1 else raw
            np.testing.assert_allclose(out["probabilities"], probabilities, atol=1e-5)
            assert result.manifest.metadata["task"] == "classification"
        else:
            np.testing.assert_allclose(out["variable"].ravel(), raw, atol=1e-4)
        assert result.manifest.source.converter == "onnxmltools"


def test_native_lightgbm_boosters_without_sample(tmp_path: Path) -> None:
    for index, (objective, y) in enumerate(
        [("binary", Y_BINARY), ("multiclass", Y_MULTI), ("regression", Y_REG)]
    ):
        params = {"objective": objective, "verbose": -1}
        if objective == "multiclass":
            params["num_class"] = 3
        booster = lgb.train(params, lgb.Dataset(X, label=y), 10)
        result = shipyard.pack(booster, name=f"lgb{index}", repo=tmp_path)
        check = result.manifest.conversion_check
        assert check is not None and check.samples == 16
        out = shipyard.load(result.path).infer({"X": X})
        raw = booster.predict(X)
        got = out.get("probabilities", out.get("variable"))
        assert got is not None
        want = np.column_stack([1 - raw, raw]) if objective == "binary" else raw
        np.testing.assert_allclose(got.reshape(want.shape), want, atol=1e-5)


def test_catboost_models(tmp_path: Path) -> None:
    catboost = pytest.importorskip("catboost")
    clf = catboost.CatBoostClassifier(iterations=20, verbose=0, allow_writing_files=False)
    clf.fit(X, Y_MULTI)
    model = shipyard.load(shipyard.pack(clf, name="cbc", repo=tmp_path, sample_input=X).path)
    assert [o.describe() for o in model.outputs] == [
        "label: int64[?]",
        "probabilities: float32[?, 3]",
    ]
    out = model.infer({"features": X})
    np.testing.assert_allclose(out["probabilities"], clf.predict_proba(X), atol=1e-5)
    reg = catboost.CatBoostRegressor(iterations=20, verbose=0, allow_writing_files=False)
    reg.fit(X, Y_REG)
    model = shipyard.load(shipyard.pack(reg, name="cbr", repo=tmp_path, sample_input=X).path)
    np.testing.assert_allclose(
        model.infer({"features": X})["predictions"].ravel(), reg.predict(X), atol=1e-4
    )


def test_catboost_with_categorical_features_is_refused(tmp_path: Path) -> None:
    catboost = pytest.importorskip("catboost")
    df = pd.DataFrame({"a": X[:, 0], "shade": np.where(X[:, 1] > 0, "dark", "light")})
    clf = catboost.CatBoostClassifier(iterations=5, verbose=0, allow_writing_files=False)
    clf.fit(df, Y_BINARY, cat_features=["shade"])
    with pytest.raises(UnsupportedModelError, match="categorical features"):
        shipyard.pack(clf, name="cat", repo=tmp_path)
