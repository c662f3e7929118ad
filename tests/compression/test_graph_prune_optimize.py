"""Graph helpers, post-training ONNX pruning and offline graph optimization."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import onnx
import pytest

from shipyard.compression import OnnxPruneConfig, OptimizeConfig
from shipyard.compression.graph import gemm_to_matmul, model_family, op_counts
from shipyard.compression.onnx_prune import magnitude_mask, prune_onnx
from shipyard.compression.optimize import optimize
from tests.compression.conftest import make_cnn, make_mlp, run


def test_gemm_to_matmul_is_exact(mlp_x: np.ndarray) -> None:
    model = make_mlp()
    rewrite = gemm_to_matmul(model)
    assert rewrite.changed == 2
    assert op_counts(rewrite.model) == {"MatMul": 2, "Add": 2, "Relu": 1}
    np.testing.assert_allclose(run(rewrite.model, mlp_x), run(model, mlp_x), rtol=1e-5, atol=1e-5)
    assert {i.name for i in rewrite.model.graph.initializer} == {
        "w1__matmul",
        "b1",
        "w2__matmul",
        "b2",
    }


def test_model_family() -> None:
    assert model_family(make_cnn()) == "cnn"
    assert model_family(make_mlp()) == "other"


def test_magnitude_mask_zeroes_exactly_the_smallest() -> None:
    weights = np.array([[0.1, -5.0], [0.01, 2.0], [-0.5, 0.0]], dtype=np.float32)
    keep = magnitude_mask(weights, 0.5)
    assert keep.sum() == 3
    assert set(weights[keep].tolist()) == {-5.0, 2.0, -0.5}


def test_onnx_prune_reaches_sparsity_and_shrinks_gzip(tmp_path: Path) -> None:
    source, out = tmp_path / "cnn.onnx", tmp_path / "pruned.onnx"
    onnx.save(make_cnn(), str(source))
    notes = prune_onnx(source, out, OnnxPruneConfig(sparsity=0.7, min_weight_elements=100))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    for name in ("c2", "fc"):
        assert np.mean(inits[name] == 0) == pytest.approx(0.7, abs=0.01)
    assert np.all(inits["c1"] != 0)  # 72 elements: below min_weight_elements
    assert "gzip" in notes[-1]
    packed = [len(gzip.compress(p.read_bytes())) for p in (source, out)]
    assert packed[1] < packed[0] * 0.6
    assert abs(out.stat().st_size - source.stat().st_size) < 1024


def test_prune_config_validates_sparsity() -> None:
    with pytest.raises(ValueError):
        OnnxPruneConfig(sparsity=1.0)


@pytest.mark.parametrize("level", ["basic", "extended"])
def test_offline_optimization(tmp_path: Path, cnn_x: np.ndarray, level: str) -> None:
    source, out = tmp_path / "cnn.onnx", tmp_path / "opt.onnx"
    onnx.save(make_cnn(), str(source))
    notes = optimize(source, out, OptimizeConfig(level=level))  # type: ignore[arg-type]
    np.testing.assert_allclose(run(out, cnn_x), run(source, cnn_x), rtol=1e-4, atol=1e-5)
    assert any(f"{level} optimization" in n for n in notes)
    counts = op_counts(onnx.load(str(out)))
    if level == "extended":
        assert any(k.startswith("com.microsoft.") for k in counts)
        assert any("only on ONNX Runtime" in n for n in notes)
    else:
        assert not any(k.startswith("com.microsoft.") for k in counts)
