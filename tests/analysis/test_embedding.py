"""A quantized MiniLM (the demo model, int8 dynamic) against its fp32 parent: cosine and
nearest-neighbour agreement, checked against scikit-learn on the two models' outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics.pairwise import paired_cosine_distances
from sklearn.neighbors import NearestNeighbors

import shipyard
from shipyard.analysis import analyze
from shipyard.compression import DynamicInt8Config, MeasureConfig, compress
from tests.compression.test_demo_models import SENTENCES
from tests.conftest import needs_demo

QUICK = MeasureConfig(
    batch_size=4, latency_runs=5, throughput_runs=2, warmup_runs=0, min_seconds=0, max_rows=64
)


@pytest.mark.slow
@needs_demo("minilm")
def test_quantized_minilm_against_its_parent(tmp_path: Path) -> None:
    from shipyard.demo import build_demo_repository

    repo = tmp_path / "models"
    build_demo_repository(repo, only=["minilm"])
    from shipyard.demo.text import tokenize

    data = tokenize(SENTENCES, repo / "minilm" / "1" / "assets" / "tokenizer.json")
    result = compress(
        repo / "minilm", config=DynamicInt8Config(), eval_data=data, max_drop=0.01, measure=QUICK
    )
    assert result.accepted, result.reasons
    np.savez(tmp_path / "sentences.npz", **data)
    r = analyze(repo / "minilm", version=2, data=tmp_path / "sentences.npz", baseline=1)
    assert r.task == "embedding" and r.data.rows == len(SENTENCES)
    outs = {}
    for v in (1, 2):
        model = shipyard.load(repo / "minilm", version=v)
        try:
            outs[v] = model.infer(data)["sentence_embedding"]
        finally:
            model.close()
    cos = 1.0 - paired_cosine_distances(outs[2].astype(np.float64), outs[1].astype(np.float64))
    assert r.overall["cosine_mean"] == pytest.approx(float(cos.mean()), abs=1e-12)
    assert r.overall["cosine_min"] == pytest.approx(float(cos.min()), abs=1e-12)
    assert 0.95 < r.overall["cosine_mean"] < 1.0  # int8 moves the outputs, a little
    k = 5
    sets = [
        NearestNeighbors(n_neighbors=k, metric="cosine")
        .fit(o.astype(np.float64))
        .kneighbors(return_distance=False)
        for o in (outs[2], outs[1])
    ]
    agree = np.mean([len(set(a) & set(b)) / k for a, b in zip(*sets, strict=True)])
    assert r.overall["neighbour_agreement"] == pytest.approx(agree, abs=1e-12)
    assert r.overall["neighbour_agreement"] >= 0.6
