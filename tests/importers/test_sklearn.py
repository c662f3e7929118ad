"""scikit-learn importer: pack → load → infer matches the original estimator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris, load_wine
from sklearn.decomposition import PCA
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC, SVR

import shipyard
from shipyard.errors import ConversionError, UnsafePickleError, UsageError
from shipyard.package.conversion import Tolerance


def _iris() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32).astype(np.float64), y


def _categorical_pipeline() -> tuple[Pipeline, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    numeric = rng.standard_normal((200, 3))
    codes = rng.integers(0, 4, size=(200, 2)).astype(np.float64)
    x = np.hstack([numeric, codes]).astype(np.float32).astype(np.float64)
    y = (numeric[:, 0] + (codes[:, 0] == 2) > 0.3).astype(np.int64)
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), [0, 1, 2]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), [3, 4]),
        ]
    )
    pipe = Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=1000))]).fit(x, y)
    return pipe, x, y


CLASSIFIERS = {
    "logistic": lambda: LogisticRegression(max_iter=1000),
    "random_forest": lambda: RandomForestClassifier(n_estimators=20, random_state=0),
    "gradient_boosting": lambda: GradientBoostingClassifier(n_estimators=20, random_state=0),
    "extra_trees": lambda: ExtraTreesClassifier(n_estimators=20, random_state=0),
    "svc_probability": lambda: SVC(probability=True, random_state=0),
    "scaler_pipeline": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
}


@pytest.mark.parametrize("kind", sorted(CLASSIFIERS))
def test_classifiers_round_trip(kind: str, tmp_path: Path) -> None:
    x, y = _iris()
    clf = CLASSIFIERS[kind]().fit(x, y)
    result = shipyard.pack(clf, name=kind, repo=tmp_path, sample_input=x)
    model = shipyard.load(result.path)
    assert [o.name for o in model.outputs] == ["label", "probabilities"]
    assert model.manifest.metadata["classes"] == [0, 1, 2]
    out = model.infer(x.astype(np.float32))
    np.testing.assert_array_equal(out["label"], clf.predict(x))
    np.testing.assert_allclose(out["probabilities"], clf.predict_proba(x), atol=1e-4)
    check = model.manifest.conversion_check
    assert check is not None and check.samples == len(x)
    assert check.compared_outputs == ["label", "probabilities"]


def test_svc_without_probability_compares_labels(tmp_path: Path) -> None:
    x, y = _iris()
    clf = SVC().fit(x, y)
    model = shipyard.load(shipyard.pack(clf, name="svc", repo=tmp_path, sample_input=x).path)
    np.testing.assert_array_equal(model.infer(x.astype(np.float32))["label"], clf.predict(x))


def test_string_labels(tmp_path: Path) -> None:
    x, y = load_wine(return_X_y=True)
    names = np.array(["barolo", "grignolino", "barbera"])[y]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, names)
    model = shipyard.load(shipyard.pack(clf, name="wine", repo=tmp_path, sample_input=x).path)
    assert model.outputs[0].dtype == "str"
    got = model.infer(x.astype(np.float32))["label"]
    assert list(got) == list(clf.predict(x.astype(np.float32).astype(np.float64)))


def test_one_hot_column_pipeline(tmp_path: Path) -> None:
    pipe, x, _ = _categorical_pipeline()
    model = shipyard.load(shipyard.pack(pipe, name="mixed", repo=tmp_path, sample_input=x).path)
    out = model.infer(x.astype(np.float32))
    np.testing.assert_array_equal(out["label"], pipe.predict(x))
    np.testing.assert_allclose(out["probabilities"], pipe.predict_proba(x), atol=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        LinearRegression,
        lambda: Ridge(alpha=0.5),
        lambda: RandomForestRegressor(n_estimators=10, random_state=0),
        lambda: make_pipeline(StandardScaler(), SVR()),
    ],
)
def test_regressors_round_trip(make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = load_diabetes(return_X_y=True)
    x = x.astype(np.float32).astype(np.float64)
    reg = make().fit(x, y)
    tol = Tolerance(atol=1e-3, rtol=1e-4)
    model = shipyard.load(
        shipyard.pack(reg, name="reg", repo=tmp_path, sample_input=x, tolerance=tol).path
    )
    got = model.infer(x.astype(np.float32))["variable"].ravel()
    np.testing.assert_allclose(got, reg.predict(x), rtol=1e-4, atol=1e-3)
    assert model.manifest.metadata["task"] == "regression"


def test_transformer_round_trip(tmp_path: Path) -> None:
    x, _ = _iris()
    pca = make_pipeline(StandardScaler(), PCA(n_components=2)).fit(x)
    model = shipyard.load(shipyard.pack(pca, name="pca", repo=tmp_path, sample_input=x).path)
    out = next(iter(model.infer(x.astype(np.float32)).values()))
    np.testing.assert_allclose(out, pca.transform(x), atol=1e-4)


def test_sample_synthesised_from_n_features(tmp_path: Path) -> None:
    x, y = _iris()
    clf = LogisticRegression(max_iter=500).fit(x, y)
    result = shipyard.pack(clf, name="iris", repo=tmp_path)
    assert result.manifest.conversion_check is not None
    assert result.manifest.conversion_check.samples == 16


def test_tolerance_violation_writes_nothing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    x, y = _iris()
    clf = LogisticRegression(max_iter=500).fit(x, y)
    real = clf.predict_proba
    monkeypatch.setattr(clf, "predict_proba", lambda data: real(data) + 0.01)
    with pytest.raises(ConversionError, match=r"probabilities.*exceeds"):
        shipyard.pack(clf, name="iris", repo=tmp_path, sample_input=x)
    assert not any((tmp_path / "iris").glob("[0-9]*"))
    tolerance = Tolerance(atol=0.02)
    result = shipyard.pack(clf, name="iris", repo=tmp_path, sample_input=x, tolerance=tolerance)
    assert result.manifest.conversion_check is not None
    assert result.manifest.conversion_check.tolerance.atol == 0.02


def test_skops_file_round_trip(tmp_path: Path) -> None:
    import skops.io as sio

    x, y = _iris()
    clf = make_pipeline(StandardScaler(), GradientBoostingClassifier(n_estimators=10)).fit(x, y)
    path = tmp_path / "clf.skops"
    sio.dump(clf, path)
    result = shipyard.pack(path, name="iris", repo=tmp_path / "m", sample_input=x)
    model = shipyard.load(result.path)
    np.testing.assert_array_equal(model.infer(x.astype(np.float32))["label"], clf.predict(x))


class Custom(LogisticRegression):
    pass


def test_skops_untrusted_type_refused_until_allowed(tmp_path: Path) -> None:
    import skops.io as sio

    x, y = _iris()
    path = tmp_path / "custom.skops"
    sio.dump(Custom(max_iter=500).fit(x, y), path)
    with pytest.raises(UnsafePickleError, match=r"does not trust.*Custom"):
        shipyard.pack(path, name="c", repo=tmp_path / "m", sample_input=x)
    name = f"{Custom.__module__}.{Custom.__qualname__}"
    # allowed: it loads, and then fails only because skl2onnx has no converter for it
    with pytest.raises(ConversionError, match="shape calculator"):
        shipyard.pack(path, name="c", repo=tmp_path / "m", sample_input=x, allow_globals=[name])


def test_bad_sample_shapes(tmp_path: Path) -> None:
    x, y = _iris()
    clf = LogisticRegression(max_iter=500).fit(x, y)
    with pytest.raises(UsageError, match="2-D matrix"):
        shipyard.pack(clf, name="iris", repo=tmp_path, sample_input=x[0])
