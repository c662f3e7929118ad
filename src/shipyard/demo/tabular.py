"""Demo scikit-learn models: breast-cancer `tabular` and `iris`, trained on bundled datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from shipyard.api import PackResult, pack

SEED = 0
TEST_SIZE = 0.25


@dataclass(frozen=True)
class Trained:
    """A fitted estimator with the split it was trained and scored on."""

    model: Pipeline
    dataset: str
    feature_names: list[str]
    class_names: list[str]
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray

    @property
    def test_accuracy(self) -> float:
        return float(self.model.score(self.x_test, self.y_test))

    def metadata(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "feature_names": self.feature_names,
            "class_names": self.class_names,
            "test_accuracy": round(self.test_accuracy, 6),
            "train_rows": len(self.x_train),
            "test_rows": len(self.x_test),
            "split": {"test_size": TEST_SIZE, "random_state": SEED, "stratify": True},
        }


def _fit(bunch: Any, dataset: str) -> Trained:
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y
    )
    model = Pipeline(
        [
            ("scale", StandardScaler()),
            ("classify", LogisticRegression(max_iter=1000, random_state=SEED)),
        ]
    )
    model.fit(x_train, y_train)
    return Trained(
        model=model,
        dataset=dataset,
        feature_names=[str(f) for f in bunch.feature_names],
        class_names=[str(c) for c in bunch.target_names],
        x_train=x_train,
        x_test=x_test,
        y_train=y_train,
        y_test=y_test,
    )


def train_tabular() -> Trained:
    """StandardScaler + LogisticRegression on scikit-learn's breast-cancer dataset."""
    return _fit(load_breast_cancer(), "sklearn.datasets.load_breast_cancer")


def train_iris() -> Trained:
    """StandardScaler + LogisticRegression on the iris dataset (used by the serving examples)."""
    return _fit(load_iris(), "sklearn.datasets.load_iris")


def _pack(trained: Trained, *, name: str, repo: Path) -> tuple[PackResult, dict[str, np.ndarray]]:
    sample = trained.x_test[:16].astype(np.float32)
    result = pack(
        trained.model, name=name, repo=repo, sample_input=sample, metadata=trained.metadata()
    )
    return result, {"X": sample[:2]}


def build_tabular(repo: Path, data_dir: Path) -> tuple[PackResult, dict[str, np.ndarray]]:
    """Train and pack `tabular`; returns the pack result and a two-row sample request."""
    del data_dir  # the tabular demo needs no data files beyond the bundled dataset
    return _pack(train_tabular(), name="tabular", repo=repo)


def build_iris(repo: Path, data_dir: Path) -> tuple[PackResult, dict[str, np.ndarray]]:
    """Train and pack `iris`; returns the pack result and a two-row sample request."""
    del data_dir
    return _pack(train_iris(), name="iris", repo=repo)
