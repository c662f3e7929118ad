"""Slices (counts, per-slice metrics), the seeded paired bootstrap, and the flip rate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from shipyard.analysis import BootstrapConfig, EvalConfig, analyze
from shipyard.analysis.compare import bootstrap_indices
from shipyard.analysis.evaluate import Predictions
from shipyard.analysis.resample import per_resample
from shipyard.analysis.slices import slice_rows
from tests.analysis.conftest import Packed, onnx_outputs


def test_slices_counts_and_per_slice_accuracy(cancer: Packed) -> None:
    result = analyze(
        cancer.model,
        data=cancer.csv,
        label="y",
        features=cancer.features,
        slices=["plan", "plan×region"],
        config=EvalConfig.model_validate({"analysis": {"min_slice_size": 25}}),
    )
    frame = cancer.eval
    pred = onnx_outputs(cancer.model, 2, frame[cancer.features].to_numpy())["label"]
    by_key = {s.key: s for s in result.slices}
    for plan, rows in frame.groupby("plan").indices.items():
        s = by_key[f"plan={plan}"]
        assert s.rows == len(rows)
        assert s.metrics["accuracy"] == skm.accuracy_score(frame["y"].iloc[rows], pred[rows])
    crossed = frame.groupby(["plan", "region"]).size()
    for (plan, region), count in crossed.items():
        key = f"plan={plan}×region={region}"
        if count < 25:
            assert result.skipped[key] == count
        else:
            assert by_key[key].rows == count
    assert sum(s.rows for s in result.slices if s.spec == "plan") == len(frame)
    assert result.skipped, "the team×region slices are under 25 rows"


def test_numeric_column_is_cut_into_quantile_bins() -> None:
    frame = pd.DataFrame({"age": np.arange(100, dtype=float), "tier": [1, 2] * 50})
    slicing = slice_rows(frame, ["age", "tier"], min_size=1, bins=4)
    ages = [s for s in slicing.slices if s.spec == "age"]
    assert [s.key for s in ages] == [
        "age=[0, 24.75]",
        "age=(24.75, 49.5]",
        "age=(49.5, 74.25]",
        "age=(74.25, 99]",
    ]
    assert [s.size for s in ages] == [25, 25, 25, 25]
    assert [s.key for s in slicing.slices if s.spec == "tier"] == ["tier=1", "tier=2"]


def test_bootstrap_is_reproducible_to_the_last_digit(cancer: Packed) -> None:
    def run() -> dict[str, object]:
        r = analyze(
            cancer.model,
            data=cancer.csv,
            label="y",
            features=cancer.features,
            slices=["plan"],
            baseline=1,
            config=EvalConfig(bootstrap=BootstrapConfig(resamples=300, seed=7)),
        )
        assert r.comparison is not None
        return r.comparison.model_dump()

    first, second = run(), run()
    assert first == second
    overall = first["overall"]["deltas"]  # type: ignore[index]
    acc = overall["accuracy"]
    assert acc["low"] is not None and acc["low"] <= acc["delta"] <= acc["high"]
    other = analyze(
        cancer.model,
        data=cancer.csv,
        label="y",
        features=cancer.features,
        baseline=1,
        config=EvalConfig(bootstrap=BootstrapConfig(resamples=300, seed=8)),
    )
    assert other.comparison is not None
    assert other.comparison.overall.deltas["accuracy"].low != acc["low"]


def test_flip_rate_and_deltas_match_the_two_versions(cancer: Packed) -> None:
    r = analyze(cancer.model, data=cancer.csv, label="y", features=cancer.features, baseline=1)
    x = cancer.eval[cancer.features].to_numpy()
    y = cancer.eval["y"].to_numpy()
    p1, p2 = onnx_outputs(cancer.model, 1, x)["label"], onnx_outputs(cancer.model, 2, x)["label"]
    assert r.comparison is not None
    assert r.comparison.overall.flip_rate is not None
    assert r.comparison.overall.flip_rate.candidate == np.mean(p1 != p2) > 0
    d = r.comparison.overall.deltas["accuracy"]
    assert d.delta == skm.accuracy_score(y, p2) - skm.accuracy_score(y, p1)


@pytest.mark.parametrize("fixture", ["cancer", "iris"])
def test_vectorised_resamples_equal_sklearn_per_resample(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    packed: Packed = request.getfixturevalue(fixture)
    out = onnx_outputs(packed.model, 1, packed.eval[packed.features].to_numpy())
    y = packed.eval["y"].to_numpy()
    classes = sorted(set(y))
    pred = Predictions(
        task="classification",
        predicted=out["label"],
        scores=out["probabilities"],
        classes=classes,
    )
    index = bootstrap_indices(np.arange(len(y)), "overall", BootstrapConfig(resamples=20))
    for name in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc"):
        fast = per_resample(name, pred, y, index)
        assert fast is not None
        for b, rows in enumerate(index):
            yb, pb, sb = y[rows], out["label"][rows], out["probabilities"][rows]
            if name == "accuracy":
                want = skm.accuracy_score(yb, pb)
            elif name == "roc_auc":
                want = (
                    skm.roc_auc_score(yb, sb[:, 1])
                    if len(classes) == 2
                    else skm.roc_auc_score(yb, sb, multi_class="ovr", labels=classes)
                )
            else:
                fn = {"precision_macro": skm.precision_score, "recall_macro": skm.recall_score}
                fn["f1_macro"] = skm.f1_score
                want = fn[name](yb, pb, labels=classes, average="macro", zero_division=0)
            assert fast[b] == pytest.approx(want, abs=1e-12), (name, b)
