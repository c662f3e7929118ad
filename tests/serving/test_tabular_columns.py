"""A DataFrame-fitted pipeline served on a real server: one tensor (V2) or key (TF) per column."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import shipyard
from shipyard.serving.server import start_in_thread
from shipyard.serving.settings import load_settings

ROWS = [
    {"colour": "red", "size": 3.0, "count": 1},
    {"colour": "blue", "size": -1.5, "count": 4},
    {"colour": "green", "size": 0.25, "count": 0},
]


def _frame(rows: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "colour": rng.choice(["red", "green", "blue"], rows),
            "size": rng.standard_normal(rows),
            "count": rng.integers(0, 5, rows),
        }
    )


@pytest.fixture(scope="module")
def pipeline() -> object:
    df = _frame()
    y = ((df["size"] > 0) ^ (df["colour"] == "red")).astype(np.int64)
    pre = ColumnTransformer(
        [
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["colour"]),
            ("num", StandardScaler(), ["size", "count"]),
        ]
    )
    return make_pipeline(pre, LogisticRegression(max_iter=500)).fit(df, y)


@pytest.fixture(scope="module")
def server_url(pipeline: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for this module's tests, which only send requests."""
    repo = tmp_path_factory.mktemp("columns") / "models"
    shipyard.pack(pipeline, name="tabular", repo=repo, sample_input=_frame().head(16))
    with start_in_thread(settings=load_settings(repository=repo, port=0, poll_interval_s=0)) as r:
        yield r.url


def _expected(pipeline: object) -> tuple[list[int], np.ndarray]:
    df = pd.DataFrame(ROWS)
    return (
        [int(v) for v in pipeline.predict(df)],  # type: ignore[attr-defined]
        pipeline.predict_proba(df),  # type: ignore[attr-defined]
    )


def _v2_inputs(*, column_shape: bool) -> list[dict[str, object]]:
    n = len(ROWS)
    shape = [n, 1] if column_shape else [n]
    types = {"colour": "BYTES", "size": "FP32", "count": "INT64"}
    return [
        {"name": name, "shape": shape, "datatype": dt, "data": [r[name] for r in ROWS]}
        for name, dt in types.items()
    ]


def test_v2_takes_one_tensor_per_column_as_n_or_n_by_1(server_url: str, pipeline: object) -> None:
    labels, probabilities = _expected(pipeline)
    with httpx.Client(base_url=server_url, timeout=10) as http:
        meta = http.get("/v2/models/tabular").json()
        assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
            ("colour", "BYTES", [-1, 1]),
            ("size", "FP32", [-1, 1]),
            ("count", "INT64", [-1, 1]),
        ]
        for column_shape in (True, False):
            body = {"inputs": _v2_inputs(column_shape=column_shape)}
            response = http.post("/v2/models/tabular/infer", json=body)
            assert response.status_code == 200, response.text
            outputs = {o["name"]: o for o in response.json()["outputs"]}
            assert outputs["label"]["data"] == labels
            got = np.array(outputs["probabilities"]["data"]).reshape(len(ROWS), -1)
            np.testing.assert_allclose(got, probabilities, atol=1e-5)


def test_tf_serving_records_and_columns(server_url: str, pipeline: object) -> None:
    labels, probabilities = _expected(pipeline)
    with httpx.Client(base_url=server_url, timeout=10) as http:
        rows = http.post("/v1/models/tabular:predict", json={"instances": ROWS})
        assert rows.status_code == 200, rows.text
        predictions = rows.json()["predictions"]
        assert [p["label"] for p in predictions] == labels
        np.testing.assert_allclose(
            [p["probabilities"] for p in predictions], probabilities, atol=1e-5
        )
        columns = {name: [r[name] for r in ROWS] for name in ("colour", "size", "count")}
        columnar = http.post("/v1/models/tabular:predict", json={"inputs": columns})
        assert columnar.status_code == 200, columnar.text
        assert columnar.json()["outputs"]["label"] == labels
        missing = http.post(
            "/v1/models/tabular:predict", json={"instances": [{"colour": "red", "size": 1.0}]}
        )
        assert missing.status_code == 400
        assert "count" in missing.json()["error"]
