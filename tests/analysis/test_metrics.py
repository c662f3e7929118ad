"""Every metric `analyze` reports equals scikit-learn computed directly on the same outputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.preprocessing import label_binarize

from shipyard.analysis import analyze
from tests.analysis.conftest import Packed, onnx_outputs


def _expected_ece(y: np.ndarray, proba: np.ndarray) -> float:
    confidence = proba.max(axis=1).astype(np.float64)
    correct = (proba.argmax(axis=1) == y).astype(int)
    observed, predicted = calibration_curve(correct, confidence, n_bins=10)
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], confidence), minlength=10)
    counts = counts[counts > 0]
    return float(np.sum(counts / counts.sum() * np.abs(observed - predicted)))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_binary_classification_equals_sklearn(cancer: Packed, fmt: str) -> None:
    data = cancer.csv if fmt == "csv" else cancer.parquet
    result = analyze(cancer.model, data=data, label="y", features=cancer.features)
    y = cancer.eval["y"].to_numpy()
    out = onnx_outputs(cancer.model, 2, cancer.eval[cancer.features].to_numpy())
    pred, proba = out["label"], out["probabilities"]
    m = result.overall
    assert result.task == "classification" and result.data.rows == len(y) == 269
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    assert m["precision_macro"] == skm.precision_score(y, pred, average="macro")
    assert m["recall_macro"] == skm.recall_score(y, pred, average="macro")
    assert m["f1_macro"] == skm.f1_score(y, pred, average="macro")
    p, r, f, _ = skm.precision_recall_fscore_support(y, pred)
    for cls in (0, 1):
        assert m[f"precision[{cls}]"] == p[cls]
        assert m[f"recall[{cls}]"] == r[cls]
        assert m[f"f1[{cls}]"] == f[cls]
    assert m["roc_auc"] == skm.roc_auc_score(y, proba[:, 1])
    assert m["pr_auc"] == skm.average_precision_score(y, proba[:, 1])
    assert m["log_loss"] == skm.log_loss(y, proba)
    assert m["ece"] == pytest.approx(_expected_ece(y, proba), abs=1e-12)
    assert result.details.confusion == skm.confusion_matrix(y, pred).tolist()
    assert 0.9 < m["accuracy"] < 1.0  # a real model on real data, not a trivial one


def test_multiclass_classification_equals_sklearn(iris: Packed) -> None:
    result = analyze(iris.model, data=iris.csv, label="y", features=iris.features, version=1)
    y = iris.eval["y"].to_numpy()
    out = onnx_outputs(iris.model, 1, iris.eval[iris.features].to_numpy())
    pred, proba = out["label"], out["probabilities"]
    m = result.overall
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    assert m["f1_macro"] == skm.f1_score(y, pred, average="macro")
    assert m["roc_auc"] == skm.roc_auc_score(y, proba, multi_class="ovr", labels=[0, 1, 2])
    onehot = label_binarize(y, classes=[0, 1, 2])
    assert m["pr_auc"] == skm.average_precision_score(onehot, proba, average="macro")
    assert m["log_loss"] == skm.log_loss(y, proba, labels=[0, 1, 2])
    assert m["ece"] == pytest.approx(_expected_ece(y, proba), abs=1e-12)
    assert result.details.confusion == skm.confusion_matrix(y, pred).tolist()
    assert len(result.details.roc) == 3 and len(result.details.pr) == 3


def test_regression_equals_sklearn(diabetes: Packed) -> None:
    result = analyze(diabetes.model, data=diabetes.parquet, label="y", features=diabetes.features)
    y = diabetes.eval["y"].to_numpy()
    out = onnx_outputs(diabetes.model, 2, diabetes.eval[diabetes.features].to_numpy())
    pred = out["variable"].ravel().astype(np.float64)
    m = result.overall
    assert result.task == "regression"
    assert m["mae"] == skm.mean_absolute_error(y, pred)
    assert m["rmse"] == skm.root_mean_squared_error(y, pred)
    assert m["r2"] == skm.r2_score(y, pred)
    assert m["residual_p50"] == np.quantile(pred - y, 0.5)
    assert m["residual_p95"] == np.quantile(pred - y, 0.95)
    assert 0.3 < m["r2"] < 0.7


def test_dataframe_fitted_package_takes_one_column_per_input(tmp_path, cancer: Packed) -> None:  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LogisticRegression

    import shipyard

    cols = cancer.features[:5]
    train = cancer.eval[cols].astype(np.float32)
    clf = LogisticRegression(max_iter=2000).fit(train, cancer.eval["y"])
    shipyard.pack(clf, name="frame", repo=tmp_path, sample_input=train[:8])
    result = analyze(tmp_path / "frame", data=cancer.csv, label="y")
    assert result.overall["accuracy"] == skm.accuracy_score(cancer.eval["y"], clf.predict(train))
