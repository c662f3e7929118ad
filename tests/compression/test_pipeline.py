"""compress() and compare(): new versions with lineage and measurements, budgets, auto."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import shipyard
from shipyard.compression import (
    NO_BUDGET,
    AutoConfig,
    Budget,
    CompressionConfigError,
    DynamicInt8Config,
    OnnxPruneConfig,
    PipelineConfig,
    ProgressEvent,
    QuantizeAutoConfig,
    StaticInt8Config,
    compare,
    compress,
)
from shipyard.compression.graph import op_counts
from shipyard.compression.pipeline import REJECTED_DIR
from shipyard.package.store import list_versions, read_verified
from tests.compression.conftest import FAST, make_mlp


def test_dynamic_int8_writes_measured_version_with_lineage(mlp_repo: Path) -> None:
    eval_file = mlp_repo.parent / "eval.npz"
    result = compress(
        mlp_repo / "mlp",
        config=DynamicInt8Config(),
        eval_data=eval_file,
        max_drop=0.05,
        measure=FAST,
    )
    assert result.accepted and result.path == mlp_repo / "mlp" / "2"
    manifest = read_verified(result.path)
    assert manifest.lineage.parent == 1
    assert [s.op for s in manifest.lineage.steps] == ["pack", "quantize"]
    step = manifest.lineage.steps[-1].config
    assert step["method"] == "int8-dynamic" and step["per_channel"] is True
    assert any("Gemm" in note for note in step["notes"])
    measured = manifest.measured
    assert measured["compared_to_version"] == 1
    for side in ("baseline", "candidate"):
        figures = measured[side]
        for key in ("file_bytes", "gzip_bytes", "latency_p50_ms", "latency_p99_ms"):
            assert figures[key] > 0
        assert figures["throughput_batch"] == 8 and figures["throughput_rows_per_s"] > 0
        assert figures["accuracy"] is not None
    assert measured["baseline"]["accuracy"] == 1.0
    assert measured["fidelity"]["mean_cosine"] > 0.999
    assert measured["fidelity"]["top1_agreement"] >= 0.95
    assert measured["size_ratio"] > 2.5
    assert measured["machine"]["onnxruntime"] and measured["machine"]["providers"]
    assert measured["budget"] == {
        "max_accuracy_drop": 0.05,
        "min_mean_cosine": None,
        "min_top1_agreement": None,
    }
    loaded = shipyard.load(mlp_repo / "mlp", version=2)
    assert loaded.infer(np.zeros((2, 64), np.float32))["logits"].shape == (2, 10)
    assert "MatMulInteger" in op_counts(onnx.load(str(result.path / "model.onnx")))


def test_candidate_over_budget_goes_to_rejected(mlp_repo: Path) -> None:
    result = compress(
        mlp_repo / "mlp",
        config=OnnxPruneConfig(sparsity=0.95),
        eval_data=mlp_repo.parent / "eval.npz",
        max_drop=0.0,
        measure=FAST,
    )
    assert not result.accepted and result.manifest is None
    assert list_versions(mlp_repo / "mlp") == [1]
    assert result.path.parent == mlp_repo / "mlp" / REJECTED_DIR
    drop = result.report.accuracy_drop
    assert drop is not None and drop > 0
    assert result.reasons == [f"accuracy drop {drop:.4g} exceeds max-drop 0 by {drop:.4g}"]
    record = json.loads((result.path / "report.json").read_text())
    assert record["parent_version"] == 1 and record["reasons"] == result.reasons
    assert record["steps"][0]["config"]["sparsity"] == 0.95
    assert (result.path / "model.onnx").is_file()
    assert shipyard.load(mlp_repo / "mlp").version == 1


def test_cosine_budget_without_labels(mlp_repo: Path, mlp_x: np.ndarray) -> None:
    result = compress(
        mlp_repo / "mlp",
        config=OnnxPruneConfig(sparsity=0.9),
        eval_data={"x": mlp_x},
        max_drop=0.001,
        measure=FAST,
    )
    assert not result.accepted
    cosine = result.report.fidelity.mean_cosine
    assert result.reasons == [
        f"mean cosine {cosine:.6g} is below min-cosine 0.999 by {0.999 - cosine:.4g}"
    ]


def test_accuracy_budget_needs_labels(mlp_repo: Path, mlp_x: np.ndarray) -> None:
    result = compress(
        mlp_repo / "mlp",
        config=DynamicInt8Config(),
        eval_data=mlp_x,
        max_drop=Budget(max_accuracy_drop=0.01),
        measure=FAST,
    )
    assert not result.accepted
    assert result.reasons[0].startswith("accuracy drop cannot be measured against max-drop 0.01")
    assert "labels (y)" in result.reasons[0]


def test_top1_budget_reports_value_limit_and_miss(mlp_repo: Path) -> None:
    result = compress(
        mlp_repo / "mlp",
        config=OnnxPruneConfig(sparsity=0.95),
        eval_data=mlp_repo.parent / "eval.npz",
        max_drop=Budget(min_top1_agreement=0.999),
        measure=FAST,
    )
    agreement = result.report.fidelity.top1_agreement
    assert not result.accepted and agreement is not None
    assert result.reasons == [
        f"top-1 agreement {agreement:.4g} is below min top-1 agreement 0.999 by "
        f"{0.999 - agreement:.4g}"
    ]


def test_pipeline_prune_then_quantize_records_both_steps(mlp_repo: Path) -> None:
    config = PipelineConfig(steps=(OnnxPruneConfig(sparsity=0.3), DynamicInt8Config()))
    # 0.3 of this random MLP's weights is a real loss (top-1 agreement 0.5 on the 4 stored
    # rows), over the default budget; this test is about the lineage, so it opts out.
    result = compress(mlp_repo / "mlp", config=config, max_drop=NO_BUDGET, measure=FAST)
    assert result.accepted
    steps = read_verified(result.path).lineage.steps
    assert [s.op for s in steps] == ["pack", "prune", "quantize"]
    assert result.report.data == "stored sample"  # the inputs it was packed with


def test_static_on_cnn_and_quantize_auto_choice(cnn_repo: Path) -> None:
    calib = cnn_repo.parent / "calib.npz"
    result = compress(
        cnn_repo / "cnn",
        config=QuantizeAutoConfig(),
        calibration=calib,
        eval_data=cnn_repo.parent / "eval.npz",
        measure=FAST,
    )
    assert result.candidate.startswith("int8-static")
    counts = op_counts(onnx.load(str(result.path / "model.onnx")))
    assert counts.get("QuantizeLinear", 0) > 0 and counts.get("DequantizeLinear", 0) > 0
    assert result.report.fidelity.mean_cosine > 0.99
    without = compress(cnn_repo / "cnn", version=1, config=QuantizeAutoConfig(), measure=FAST)
    assert without.candidate.startswith("int8-dynamic")


def test_auto_keeps_fastest_within_budget_and_reports_progress(cnn_repo: Path) -> None:
    events: list[ProgressEvent] = []
    result = compress(
        cnn_repo / "cnn",
        config=AutoConfig(prune_sparsity=0.9),
        calibration=cnn_repo.parent / "calib.npz",
        eval_data=cnn_repo.parent / "eval.npz",
        max_drop=0.05,
        measure=FAST,
        progress=events.append,
    )
    names = [c.name for c in result.candidates]
    assert len(names) == 4 and any(n.startswith("int8-static") for n in names)
    assert not any(n == "fp16" for n in names)  # CPU target
    within = [c for c in result.candidates if c.within_budget]
    assert result.accepted and result.candidate in {c.name for c in within}
    # the fastest wins only when its speed-up clears the measured spread (no other candidate
    # is clearly faster than it); otherwise fidelity decides (compression/choice.py)
    chosen = next(c for c in within if c.name == result.candidate)
    if "the fastest" in result.decision:
        assert chosen.throughput_low is not None and chosen.throughput_low > 1.0
        assert chosen.throughput_high is not None
        assert not any((c.throughput_low or 0.0) > chosen.throughput_high for c in within)
    else:
        assert "fidelity" in result.decision, result.decision
    pruned = next(c for c in result.candidates if c.name.startswith("prune"))
    assert not pruned.within_budget and pruned.reasons
    manifest = read_verified(result.path)
    assert len(manifest.measured["candidates"]) == 4
    stages = [(e.stage, e.index) for e in events]
    assert stages[:2] == [("compress", 0), ("measure", 0)] and stages[-1][0] == "write"


def test_auto_without_calibration_or_gpu_skips_static_and_fp16(mlp_repo: Path) -> None:
    result = compress(mlp_repo / "mlp", config=AutoConfig(prune_sparsity=None), measure=FAST)
    assert [c.name for c in result.candidates] == [
        "int8-dynamic (per-tensor)",
        "int8-dynamic (per-channel)",
    ]
    assert result.accepted


def test_new_version_can_go_to_another_repo_and_carries_assets(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shipyard.pack(make_mlp(), name="mlp", repo=source, extra_files={"assets/vocab.txt": b"a\nb\n"})
    result = compress(
        source / "mlp", config=DynamicInt8Config(), repo=tmp_path / "out", measure=FAST
    )
    assert result.path == tmp_path / "out" / "mlp" / "1"
    assert (result.path / "assets" / "vocab.txt").read_bytes() == b"a\nb\n"
    assert read_verified(result.path).lineage.parent == 1


def test_compare_two_versions(mlp_repo: Path) -> None:
    # no budget: 4 warm-up rows of near-tied logits may flip one label on some CPUs
    result = compress(
        mlp_repo / "mlp", config=DynamicInt8Config(), measure=FAST, max_drop=NO_BUDGET
    )
    assert result.accepted, result.reasons
    report = compare(mlp_repo / "mlp", 1, 2, eval_data=mlp_repo.parent / "eval.npz", measure=FAST)
    # The candidate's label names the method its lineage adds to v1's.
    assert report.baseline.label == "v1"
    assert report.candidate.label == "v2 (int8-dynamic per-channel)"
    assert report.size_ratio > 2.5
    assert report.accuracy_drop is not None and report.accuracy_drop <= 0.05
    assert report.fidelity.rows == 64


def test_static_without_calibration_is_a_usage_error(cnn_repo: Path) -> None:
    with pytest.raises(CompressionConfigError, match="calibration"):
        compress(cnn_repo / "cnn", config=StaticInt8Config(), measure=FAST)
    assert list_versions(cnn_repo / "cnn") == [1]


def test_eval_data_must_fit_the_model(mlp_repo: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", a=np.zeros((4, 64)), b=np.zeros((4, 64)))
    with pytest.raises(CompressionConfigError, match="one input 'x'"):
        compress(mlp_repo / "mlp", config=DynamicInt8Config(), eval_data=tmp_path / "bad.npz")
    with pytest.raises(CompressionConfigError, match="not found"):
        compress(mlp_repo / "mlp", config=DynamicInt8Config(), eval_data=tmp_path / "nope.npz")


def test_tampered_parent_is_refused(mlp_repo: Path) -> None:
    from shipyard.errors import IntegrityError

    model = mlp_repo / "mlp" / "1" / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\x00")
    with pytest.raises(IntegrityError, match="model.onnx"):
        compress(mlp_repo / "mlp", config=DynamicInt8Config(), measure=FAST)
    assert list_versions(mlp_repo / "mlp") == [1]


def test_destructive_prune_without_budget_is_not_published(mlp_repo: Path) -> None:
    """No --max-drop used to mean no check: a 0.9 prune became the served version."""
    result = compress(mlp_repo / "mlp", config=OnnxPruneConfig(sparsity=0.9), measure=FAST)
    assert not result.accepted and result.default_budget
    assert result.budget == Budget(min_top1_agreement=0.99)
    assert list_versions(mlp_repo / "mlp") == [1]
    assert result.path.parent == mlp_repo / "mlp" / REJECTED_DIR
    agreement = result.report.fidelity.top1_agreement
    assert agreement is not None and agreement < 0.99
    assert result.reasons == [
        f"top-1 agreement {agreement:.4g} is below min top-1 agreement 0.99 "
        f"by {0.99 - agreement:.4g}"
    ]


def test_default_budget_with_labels_adds_accuracy(mlp_repo: Path) -> None:
    result = compress(
        mlp_repo / "mlp",
        config=OnnxPruneConfig(sparsity=0.9),
        eval_data=mlp_repo.parent / "eval.npz",
        measure=FAST,
    )
    assert not result.accepted
    assert result.budget == Budget(max_accuracy_drop=0.01, min_top1_agreement=0.99)
    assert any(r.startswith("accuracy drop") for r in result.reasons)


def test_no_budget_publishes_and_records_it(mlp_repo: Path) -> None:
    result = compress(
        mlp_repo / "mlp", config=OnnxPruneConfig(sparsity=0.9), max_drop=NO_BUDGET, measure=FAST
    )
    assert result.accepted and not result.default_budget
    assert result.budget is not None and not result.budget.checked
    assert read_verified(result.path).measured["budget"] == {
        "max_accuracy_drop": None,
        "min_mean_cosine": None,
        "min_top1_agreement": None,
    }


def test_default_budget_for_float_outputs_is_mean_cosine() -> None:
    from shipyard.compression.config import has_class_output, resolve_budget
    from shipyard.package.tensorspec import TensorSpec

    embedding = [TensorSpec(name="e", dtype="float32", shape=(-1, 1))]
    classes = [TensorSpec(name="label", dtype="int64", shape=(-1,))]
    assert not has_class_output(embedding) and has_class_output(classes)
    # a sentence embedding [N, 384] is not class scores: its argmax means nothing
    sentence = [TensorSpec(name="sentence_embedding", dtype="float32", shape=(-1, 384))]
    logits = [TensorSpec(name="output", dtype="float32", shape=(-1, 10))]
    assert not has_class_output(sentence) and has_class_output(logits)
    assert has_class_output(sentence, {"classes": [0, 1]})
    budget, default = resolve_budget(None, labelled=False, classes=False)
    assert default and budget == Budget(min_mean_cosine=0.98)
    assert budget.describe() == "mean cosine >= 0.98"
    assert resolve_budget(0.05, labelled=True, classes=True) == (
        Budget(max_accuracy_drop=0.05),
        False,
    )
