"""Real models on scikit-learn's bundled datasets, packed, with eval tables to analyze."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import shipyard


@dataclass(frozen=True)
class Packed:
    model: Path
    """The model folder (versions 1 and 2)."""
    eval: pd.DataFrame
    """Eval rows: the features, `y`, and the slice columns `plan` and `region`."""
    features: list[str]
    csv: Path
    parquet: Path


def _eval_frame(x: pd.DataFrame, y: pd.Series, seed: int) -> pd.DataFrame:
    frame = x.reset_index(drop=True).copy()
    frame["y"] = y.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    frame["plan"] = rng.choice(["free", "pro", "team"], size=len(frame), p=[0.5, 0.3, 0.2])
    frame["region"] = rng.choice(["eu", "us"], size=len(frame))
    return frame


def _pack_two(name: str, repo: Path, models: list[object], sample: np.ndarray) -> Path:
    for model in models:
        shipyard.pack(model, name=name, repo=repo, sample_input=sample)
    return repo / name


def _write(tmp: Path, name: str, frame: pd.DataFrame) -> tuple[Path, Path]:
    csv, parquet = tmp / f"{name}.csv", tmp / f"{name}.parquet"
    frame.to_csv(csv, index=False)
    frame.to_parquet(parquet, index=False)
    return csv, parquet


@pytest.fixture(scope="session")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> Packed:
    """Binary: v1 a strongly regularised logistic regression, v2 a better one."""
    tmp = tmp_path_factory.mktemp("cancer")
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    train = x[:300].to_numpy(np.float32)
    models = [
        make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(train, y[:300])
        for c in (0.0001, 1.0)
    ]
    model = _pack_two("cancer", tmp / "models", models, train[:8])
    frame = _eval_frame(x[300:], y[300:], seed=1)
    return Packed(model, frame, list(x.columns), *_write(tmp, "cancer", frame))


@pytest.fixture(scope="session")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Packed:
    tmp = tmp_path_factory.mktemp("iris")
    x, y = load_iris(return_X_y=True, as_frame=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x.iloc[order], y.iloc[order]
    train = x[:60].to_numpy(np.float32)
    models = [LogisticRegression(C=c, max_iter=1000).fit(train, y[:60]) for c in (0.05, 10.0)]
    model = _pack_two("iris", tmp / "models", models, train[:8])
    frame = _eval_frame(x[60:], y[60:], seed=2)
    return Packed(model, frame, list(x.columns), *_write(tmp, "iris", frame))


@pytest.fixture(scope="session")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> Packed:
    tmp = tmp_path_factory.mktemp("diabetes")
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    train = x[:250].to_numpy(np.float32)
    # v1 sees only the first two features, v2 all ten.
    weak = make_pipeline(StandardScaler(), LinearRegression()).fit(
        np.c_[train[:, :2], np.zeros_like(train[:, 2:])], y[:250]
    )
    full = LinearRegression().fit(train, y[:250])
    model = _pack_two("diabetes", tmp / "models", [weak, full], train[:8])
    frame = _eval_frame(x[250:], y[250:].astype(float), seed=3)
    return Packed(model, frame, list(x.columns), *_write(tmp, "diabetes", frame))


def onnx_outputs(model_dir: Path, version: int, x: np.ndarray) -> dict[str, np.ndarray]:
    """The package's own outputs, straight from shipyard.load (what sklearn is compared on)."""
    model = shipyard.load(model_dir, version=version)
    try:
        return model.infer(x.astype(np.float32))
    finally:
        model.close()
