"""scikit-learn models fitted on DataFrames: one input per column, named and typed by it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

import shipyard
from shipyard.errors import UsageError


def _frame(
    rows: int = 150, *, names: tuple[str, str, str] = ("width", "colour", "count")
) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    width, colour, count = names
    return pd.DataFrame(
        {
            width: rng.standard_normal(rows),
            colour: rng.choice(["red", "green", "blue"], rows),
            count: rng.integers(0, 6, rows),
        }
    )


def _pipeline(df: pd.DataFrame) -> Pipeline:
    width, colour, count = df.columns
    y = ((df[width] > 0) | (df[colour] == "red")).astype(np.int64)
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), [width, count]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), [colour]),
        ]
    )
    return Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=500))]).fit(df, y)


def _columns(df: pd.DataFrame, *, flat: bool = False) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name in df.columns:
        values = df[name].to_numpy()
        if values.dtype.kind == "f":
            values = values.astype(np.float32)
        elif values.dtype.kind in "iub":
            values = values.astype(np.int64)
        else:
            values = values.astype(object)
        out[str(name)] = values if flat else values.reshape(-1, 1)
    return out


def test_column_transformer_takes_one_typed_input_per_column(tmp_path: Path) -> None:
    df = _frame()
    pipe = _pipeline(df)
    result = shipyard.pack(pipe, name="tab", repo=tmp_path, sample_input=df.head(20))
    model = shipyard.load(result.path)
    assert [s.describe() for s in model.inputs] == [
        "width: float32[?, 1]",
        "colour: str[?, 1]",
        "count: int64[?, 1]",
    ]
    assert [o.name for o in model.outputs] == ["label", "probabilities"]
    check = result.manifest.conversion_check
    assert check is not None and check.samples == 20
    assert check.compared_outputs == ["label", "probabilities"]
    for flat in (False, True):  # [N, 1] and plain [N] columns are both accepted
        out = model.infer(_columns(df, flat=flat))
        np.testing.assert_array_equal(out["label"], pipe.predict(df))
        np.testing.assert_allclose(out["probabilities"], pipe.predict_proba(df), atol=1e-5)


def test_column_names_that_clash_with_converter_names_are_kept(tmp_path: Path) -> None:
    df = _frame(names=("X", "variable", "probabilities_in"))
    df["label"] = np.random.default_rng(1).standard_normal(len(df))
    pipe = _pipeline(df[["X", "variable", "probabilities_in"]])
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), ["X", "probabilities_in", "label"]),
            ("cat", OneHotEncoder(), ["variable"]),
        ]
    )
    pipe = make_pipeline(pre, LogisticRegression(max_iter=500)).fit(
        df, pipe.predict(df[["X", "variable", "probabilities_in"]])
    )
    model = shipyard.load(shipyard.pack(pipe, name="clash", repo=tmp_path, sample_input=df).path)
    assert [s.name for s in model.inputs] == ["X", "variable", "probabilities_in", "label"]
    # "label" is taken by a column, so that output moves aside; "probabilities" stays.
    assert [o.name for o in model.outputs] == ["output_label", "probabilities"]
    out = model.infer(_columns(df))
    np.testing.assert_array_equal(out["output_label"], pipe.predict(df))


def test_classifier_outputs_keep_their_names_when_columns_do_not_clash(tmp_path: Path) -> None:
    df = _frame(names=("X", "variable", "scores"))
    model = shipyard.load(
        shipyard.pack(_pipeline(df), name="c", repo=tmp_path, sample_input=df).path
    )
    assert [s.name for s in model.inputs] == ["X", "variable", "scores"]
    assert [o.name for o in model.outputs] == ["label", "probabilities"]


def test_skops_file_without_sample_types_columns_from_encoders(tmp_path: Path) -> None:
    df = _frame()
    pipe = _pipeline(df)
    path = tmp_path / "pipe.skops"
    sio.dump(pipe, path)
    result = shipyard.pack(path, name="skops", repo=tmp_path / "repo")
    model = shipyard.load(result.path)
    # No sample: numbers are float32, the one-hot encoded column is a string input.
    assert [s.describe() for s in model.inputs] == [
        "width: float32[?, 1]",
        "colour: str[?, 1]",
        "count: float32[?, 1]",
    ]
    check = result.manifest.conversion_check
    assert check is not None and check.samples == 32
    feed = _columns(df)
    feed["count"] = feed["count"].astype(np.float32)
    np.testing.assert_array_equal(model.infer(feed)["label"], pipe.predict(df))


def test_skops_file_with_npz_sample_keyed_by_column(tmp_path: Path) -> None:
    df = _frame()
    pipe = _pipeline(df)
    sio.dump(pipe, tmp_path / "pipe.skops")
    np.savez(
        tmp_path / "sample.npz",
        width=df["width"].to_numpy()[:10],
        colour=df["colour"].to_numpy().astype(str)[:10],
        count=df["count"].to_numpy()[:10],
    )
    result = shipyard.pack(
        tmp_path / "pipe.skops",
        name="npz",
        repo=tmp_path / "repo",
        sample_input=tmp_path / "sample.npz",
    )
    assert [s.dtype for s in result.manifest.inputs] == ["float32", "str", "int64"]
    assert result.manifest.conversion_check is not None
    assert result.manifest.conversion_check.samples == 10


def test_ordinal_encoder_categories_are_synthesized(tmp_path: Path) -> None:
    df = _frame()
    pre = ColumnTransformer([("cat", OrdinalEncoder(), ["colour"])], remainder="passthrough")
    pipe = make_pipeline(pre, RandomForestRegressor(n_estimators=5, random_state=0))
    pipe.fit(df, df["width"])
    sio.dump(pipe, tmp_path / "ord.skops")
    result = shipyard.pack(tmp_path / "ord.skops", name="ord", repo=tmp_path / "repo")
    assert [s.dtype for s in result.manifest.inputs] == ["float32", "str", "float32"]


def test_bare_estimator_on_mixed_columns_and_bool(tmp_path: Path) -> None:
    df = _frame()[["count", "width"]]
    df["flag"] = df["width"] > 0.5
    model_obj = LogisticRegression(max_iter=500).fit(df, (df["count"] > 2).astype(np.int64))
    model = shipyard.load(shipyard.pack(model_obj, name="mix", repo=tmp_path, sample_input=df).path)
    # bool columns go in as int64 0/1: skl2onnx's numeric converters take no bool tensors.
    assert [s.describe() for s in model.inputs] == [
        "count: int64[?, 1]",
        "width: float32[?, 1]",
        "flag: int64[?, 1]",
    ]
    np.testing.assert_array_equal(model.infer(_columns(df))["label"], model_obj.predict(df))


def test_category_dtype_is_a_string_input(tmp_path: Path) -> None:
    df = _frame()
    df["colour"] = df["colour"].astype("category")
    result = shipyard.pack(_pipeline(df), name="cat", repo=tmp_path, sample_input=df)
    assert [s.dtype for s in result.manifest.inputs] == ["float32", "str", "int64"]


@pytest.mark.parametrize(
    ("estimator", "outputs", "task"),
    [
        (KMeans(3, n_init=2, random_state=0), ["label", "scores"], "clustering"),
        (
            IsolationForest(n_estimators=20, random_state=0),
            ["label", "scores"],
            "outlier_detection",
        ),
        (GaussianMixture(2, random_state=0), ["label", "probabilities"], "predict"),
        (PCA(2), ["variable"], "transform"),
    ],
    ids=["kmeans", "isolation_forest", "gaussian_mixture", "pca"],
)
def test_unsupervised_models_compare_each_output_with_its_method(
    estimator: object, outputs: list[str], task: str, tmp_path: Path
) -> None:
    df = _frame()[["width", "count"]]
    fitted = make_pipeline(StandardScaler(), estimator).fit(df)
    result = shipyard.pack(fitted, name="u", repo=tmp_path, sample_input=df)
    check = result.manifest.conversion_check
    assert check is not None and check.compared_outputs == outputs
    assert result.manifest.metadata["task"] == task
    out = shipyard.load(result.path).infer(_columns(df))
    if "scores" in outputs and task == "clustering":
        np.testing.assert_allclose(out["scores"], fitted.transform(df), atol=1e-4)
    if task == "outlier_detection":
        np.testing.assert_allclose(out["scores"].ravel(), fitted.decision_function(df), atol=1e-4)


def test_datetime_column_is_refused_with_its_name(tmp_path: Path) -> None:
    df = _frame()[["width"]]
    model = LogisticRegression().fit(df, df["width"] > 0)
    sample = df.assign(when=pd.Timestamp("2024-01-01"))
    sample.attrs = {}
    model.feature_names_in_ = np.array(["width", "when"], dtype=object)
    with pytest.raises(
        UsageError, match=r"column 'when' has dtype datetime64.*turn it into numbers"
    ):
        shipyard.pack(model, name="dt", repo=tmp_path, sample_input=sample)


def test_string_column_with_missing_values_says_how_to_fill(tmp_path: Path) -> None:
    df = _frame()
    pipe = _pipeline(df)
    sample = df.head(5).astype({"colour": object})
    sample.loc[sample.index[0], "colour"] = None
    with pytest.raises(UsageError, match=r"column 'colour' has missing values.*fillna"):
        shipyard.pack(pipe, name="na", repo=tmp_path, sample_input=sample)
