"""compress's accuracy comes from analysis.metrics and covers every labelled eval row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer

from shipyard.compression import MeasureConfig, OptimizeConfig, compress
from tests.analysis.conftest import Packed, onnx_outputs

QUICK = MeasureConfig(batch_size=8, latency_runs=5, throughput_runs=2, warmup_runs=0, min_seconds=0)


def test_accuracy_uses_all_rows_not_the_first_512(cancer: Packed, tmp_path: Path) -> None:
    import shutil

    model = tmp_path / "cancer"
    shutil.copytree(cancer.model, model)
    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    y = y.copy()
    y[512:] = 1 - y[512:]  # rows past 512 disagree with the model: they must count
    np.savez(tmp_path / "eval.npz", x=x, y=y)
    result = compress(
        model,
        config=OptimizeConfig(level="basic"),
        eval_data=tmp_path / "eval.npz",
        measure=QUICK,
        max_drop=0.5,
    )
    pred = onnx_outputs(model, 2, x)["label"]
    assert len(y) == 569 > QUICK.max_rows
    figures = result.report.candidate
    assert figures.accuracy_rows == 569
    assert figures.accuracy == round(skm.accuracy_score(y, pred), 6)
    assert figures.accuracy != round(skm.accuracy_score(y[:512], pred[:512]), 6)
