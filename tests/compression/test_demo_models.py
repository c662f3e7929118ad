"""The real demo models through every compression method, kept small enough for CI.

Digits (PyTorch CNN) goes through every method and must stay within the accuracy bounds
documented in docs/compression.md; tabular (scikit-learn, ONNX-ML operators) takes the graph
optimizations and refuses the rest with a clear error; MiniLM takes int8 dynamic once.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import shipyard
from shipyard.compression import (
    AutoConfig,
    CompressionConfigError,
    CompressResult,
    DynamicInt8Config,
    Fp16Config,
    Int4WeightOnlyConfig,
    MeasureConfig,
    OnnxPruneConfig,
    OptimizeConfig,
    PipelineConfig,
    QuantizeAutoConfig,
    StaticInt8Config,
    compress,
)
from shipyard.compression.config import AnyConfig
from shipyard.compression.graph import op_counts
from shipyard.compression.pipeline import REJECTED_DIR
from shipyard.demo import build_demo_repository
from shipyard.package.store import list_versions, read_verified
from shipyard.serving.repository import ModelRepository
from tests.conftest import needs_demo

HAS_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "onnxscript"))

# Few timed runs and no minimum time; all 450 eval rows for accuracy.
QUICK = MeasureConfig(
    batch_size=8, latency_runs=5, throughput_runs=2, warmup_runs=1, min_seconds=0, max_rows=512
)

# (id, config, max accuracy drop on digits_eval.npz) — the bounds in docs/compression.md.
DIGITS_METHODS: list[tuple[str, AnyConfig, float]] = [
    ("int8-dynamic", DynamicInt8Config(), 0.01),
    ("int8-static", StaticInt8Config(), 0.01),
    ("fp16", Fp16Config(), 0.01),
    ("int4", Int4WeightOnlyConfig(block_size=32), 0.01),
    ("prune-50", OnnxPruneConfig(sparsity=0.5), 0.02),
    (
        "prune-50+int8",
        PipelineConfig(steps=(OnnxPruneConfig(sparsity=0.5), DynamicInt8Config())),
        0.02,
    ),
    ("optimize-basic", OptimizeConfig(level="basic"), 0.0),
    ("optimize-extended", OptimizeConfig(level="extended"), 0.0),
    ("quantize-auto", QuantizeAutoConfig(), 0.01),
    ("auto", AutoConfig(), 0.01),
]
LAST_OP = {"int8": "quantize", "prune": "prune", "optimize": "optimize", "fp16": "convert"}


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tabular + digits from the shared demo cache, plus a tabular eval/calibration set."""
    if not HAS_TORCH:
        pytest.skip("the digits demo needs torch and onnxscript")
    repo = tmp_path_factory.mktemp("compress-demo") / "models"
    build_demo_repository(repo, include_text=False, only=["tabular", "digits"])
    from shipyard.demo.tabular import train_tabular

    trained = train_tabular()
    np.savez(repo / "tabular_eval.npz", X=trained.x_test.astype(np.float32), y=trained.y_test)
    np.savez(repo / "tabular_calibration.npz", X=trained.x_train[:64].astype(np.float32))
    return repo


def _fresh(demo_repo: Path, tmp_path: Path, name: str) -> Path:
    """A private copy of the model folder (version 1 only), so tests do not share versions."""
    target = tmp_path / "models" / name
    shutil.copytree(demo_repo / name / "1", target / "1")
    return target


def _check_child(result: CompressResult, model_dir: Path, eval_x: np.ndarray) -> None:
    """A new version that verifies and loads, points at version 1 and carries measurements."""
    assert result.accepted and result.manifest is not None, result.reasons
    manifest = read_verified(result.path)
    assert result.path == model_dir / str(manifest.version) and manifest.version >= 2
    assert manifest.lineage.parent == 1
    assert manifest.lineage.steps[0].op == "pack" and len(manifest.lineage.steps) >= 2
    measured = manifest.measured
    assert measured["compared_to_version"] == 1
    for side in ("baseline", "candidate"):
        figures = measured[side]
        for key in ("file_bytes", "gzip_bytes", "latency_p50_ms", "throughput_rows_per_s"):
            assert figures[key] > 0, (side, key)
        assert figures["accuracy"] is not None
    assert measured["fidelity"]["rows"] == len(eval_x)
    assert measured["machine"]["onnxruntime"]
    model = shipyard.load(model_dir, version=manifest.version)
    try:
        outputs = model.infer(eval_x[:4])
    finally:
        model.close()
    assert all(len(value) == 4 for value in outputs.values())


@pytest.mark.parametrize(
    ("config", "bound"),
    [pytest.param(config, bound, id=name) for name, config, bound in DIGITS_METHODS],
)
def test_digits_every_method_stays_within_its_accuracy_bound(
    demo_repo: Path, tmp_path: Path, config: AnyConfig, bound: float
) -> None:
    model_dir = _fresh(demo_repo, tmp_path, "digits")
    eval_file = demo_repo / "digits_eval.npz"
    result = compress(
        model_dir,
        config=config,
        eval_data=eval_file,
        calibration=demo_repo / "digits_calibration.npz",
        max_drop=bound,
        measure=QUICK,
    )
    with np.load(eval_file) as saved:
        eval_x = saved["x"]
    _check_child(result, model_dir, eval_x)
    report = result.report
    assert report.baseline.accuracy is not None and report.baseline.accuracy >= 0.95
    assert report.accuracy_drop is not None and report.accuracy_drop <= bound + 1e-9
    steps = read_verified(result.path).lineage.steps
    if isinstance(config, PipelineConfig):
        assert [s.op for s in steps[1:]] == ["prune", "quantize"]
    elif not isinstance(config, AutoConfig | QuantizeAutoConfig):
        assert steps[-1].config["method"] == config.method
    counts = op_counts(onnx.load(str(result.path / "model.onnx")))
    if isinstance(config, StaticInt8Config):
        assert counts.get("QuantizeLinear", 0) and counts.get("DequantizeLinear", 0)
        assert any("calibrated on 128 rows" in n for n in steps[-1].config["notes"])
    if isinstance(config, QuantizeAutoConfig):  # a CNN with calibration data → static
        assert result.candidate.startswith("int8-static")
    if isinstance(config, AutoConfig):
        assert result.candidate in {c.name for c in result.candidates if c.within_budget}
        assert len(read_verified(result.path).measured["candidates"]) == len(result.candidates)


def test_digits_over_budget_is_rejected_with_the_miss_and_not_servable(
    demo_repo: Path, tmp_path: Path
) -> None:
    model_dir = _fresh(demo_repo, tmp_path, "digits")
    result = compress(
        model_dir,
        config=OnnxPruneConfig(sparsity=0.95),
        eval_data=demo_repo / "digits_eval.npz",
        max_drop=0.01,
        measure=QUICK,
    )
    assert not result.accepted and result.manifest is None
    drop = result.report.accuracy_drop
    assert drop is not None and drop > 0.01
    match = re.fullmatch(
        r"accuracy drop ([0-9.]+) exceeds max-drop 0\.01 by ([0-9.]+)", result.reasons[0]
    )
    assert match, result.reasons
    assert float(match.group(1)) == pytest.approx(drop, abs=5e-4)
    assert float(match.group(2)) == pytest.approx(drop - 0.01, abs=5e-4)
    # Kept for inspection under .rejected/, invisible as a version or a model.
    assert result.path.parent == model_dir / REJECTED_DIR
    assert (result.path / "model.onnx").is_file()
    record = json.loads((result.path / "report.json").read_text(encoding="utf-8"))
    assert record["reasons"] == result.reasons and record["parent_version"] == 1
    assert list_versions(model_dir) == [1]
    repository = ModelRepository(model_dir.parent)
    assert repository.model_names() == ["digits"]
    scanned = repository.scan("digits")
    assert scanned is not None and list(scanned.versions) == [1]
    assert repository.scan(REJECTED_DIR) is None
    assert shipyard.load(model_dir).version == 1


def _png_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Digits as PNGs in one folder per class (torchvision's ImageFolder layout)."""
    from shipyard.demo.digits import to_png

    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:04d}.png").write_bytes(to_png(image))
    return root


def test_digits_int8_static_from_png_folders_scores_what_a_client_gets(
    demo_repo: Path, tmp_path: Path
) -> None:
    from shipyard.demo.digits import load_data

    data = load_data()
    rows = 120
    calibration = _png_folder(tmp_path / "calib", data.x_train[:64], data.y_train[:64])
    eval_dir = _png_folder(tmp_path / "eval", data.x_test[:rows], data.y_test[:rows])
    model_dir = _fresh(demo_repo, tmp_path, "digits")
    result = compress(
        model_dir,
        config=StaticInt8Config(),
        calibration=calibration,
        eval_data=eval_dir,
        max_drop=0.02,
        measure=QUICK,
    )
    assert result.accepted, result.reasons
    report = result.report
    served = report.fidelity.served
    assert served is not None and served.source == "images" and served.rows == rows
    assert served.label_output == "label" and served.label_agreement is not None
    assert served.label_agreement >= 0.97
    assert f"{eval_dir}/ ({rows} images" in report.data
    # Accuracy from the images' folder names, scored on the served labels: the PNGs hold
    # the dataset's pixels as 8-bit levels, so it matches the tensors' accuracy closely.
    assert report.baseline.accuracy_rows == rows and report.baseline.accuracy is not None
    parent = shipyard.load(model_dir, version=1)
    try:
        scores = parent.infer(data.x_test[:rows])[parent.outputs[0].name]
    finally:
        parent.close()
    from_tensors = float(np.mean(scores.argmax(axis=1) == data.y_test[:rows]))
    assert report.baseline.accuracy == pytest.approx(from_tensors, abs=2 / rows)
    assert report.accuracy_drop is not None and report.accuracy_drop <= 0.02
    notes = read_verified(result.path).lineage.steps[-1].config["notes"]
    assert any("calibrated on 64 rows from" in n and "64 images" in n for n in notes)


@pytest.mark.parametrize("level", ["basic", "extended"])
def test_tabular_takes_graph_optimization(demo_repo: Path, tmp_path: Path, level: str) -> None:
    model_dir = _fresh(demo_repo, tmp_path, "tabular")
    result = compress(
        model_dir,
        config=OptimizeConfig(level=level),  # type: ignore[arg-type]
        eval_data=demo_repo / "tabular_eval.npz",
        max_drop=0.0,
        measure=QUICK,
    )
    with np.load(demo_repo / "tabular_eval.npz") as saved:
        eval_x = saved["X"]
    _check_child(result, model_dir, eval_x)
    assert result.report.accuracy_drop == 0.0
    assert result.report.baseline.accuracy is not None and result.report.baseline.accuracy > 0.9


@pytest.mark.parametrize(
    ("config", "method"),
    [
        pytest.param(DynamicInt8Config(), "int8-dynamic", id="int8-dynamic"),
        pytest.param(StaticInt8Config(), "int8-static", id="int8-static"),
        pytest.param(Fp16Config(), "fp16", id="fp16"),
        pytest.param(Int4WeightOnlyConfig(), "int4", id="int4"),
        pytest.param(OnnxPruneConfig(sparsity=0.5), "prune", id="prune"),
        pytest.param(
            PipelineConfig(steps=(OnnxPruneConfig(sparsity=0.5), DynamicInt8Config())),
            "prune",
            id="prune+int8",
        ),
        pytest.param(QuantizeAutoConfig(), "int8-dynamic", id="quantize-auto"),
        pytest.param(AutoConfig(), "auto", id="auto"),
    ],
)
def test_tabular_refuses_what_does_not_apply_with_a_clear_error(
    demo_repo: Path, tmp_path: Path, config: AnyConfig, method: str
) -> None:
    model_dir = _fresh(demo_repo, tmp_path, "tabular")
    with pytest.raises(CompressionConfigError) as caught:
        compress(
            model_dir,
            config=config,
            eval_data=demo_repo / "tabular_eval.npz",
            calibration=demo_repo / "tabular_calibration.npz",
            measure=QUICK,
        )
    message = str(caught.value)
    assert message.startswith(f"{method} does not apply to this model: it has no ")
    assert "ONNX-ML operators (LinearClassifier, Scaler)" in message
    assert "try --optimize basic" in message
    assert list_versions(model_dir) == [1]
    assert not (model_dir / REJECTED_DIR).exists()


# ------------------------------------------------------------- MiniLM: one int8 dynamic run

SENTENCES = [
    "The weather is lovely today, so we are going for a walk in the park.",
    "How do I reset my password if I no longer have access to my email?",
    "The quarterly report shows revenue growth of twelve percent.",
    "A man is playing a guitar on the street corner.",
    "Children are building a sandcastle on the beach.",
    "Please send me the invoice for last month's order.",
    "The train to Berlin was delayed by forty minutes.",
    "Our team deployed the model to production on Friday.",
    "Researchers discovered a new species of frog in the rainforest.",
    "I would like to book a table for two at seven o'clock.",
    "The software update fixes several security vulnerabilities.",
    "Electric cars are becoming cheaper every year.",
]


@needs_demo("minilm")
def test_minilm_int8_dynamic_keeps_mean_cosine(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    build_demo_repository(repo, only=["minilm"])
    from shipyard.demo.text import tokenize

    data = tokenize(SENTENCES, repo / "minilm" / "1" / "assets" / "tokenizer.json")
    result = compress(
        repo / "minilm",
        config=DynamicInt8Config(),
        eval_data=data,
        max_drop=0.01,  # no labels: mean cosine must stay >= 0.99
        measure=QUICK.model_copy(update={"batch_size": 4}),
    )
    assert result.accepted, result.reasons
    assert result.report.fidelity.mean_cosine >= 0.99
    assert result.report.size_ratio > 3.5
    manifest = read_verified(result.path)
    assert manifest.lineage.parent == 1 and manifest.measured["compared_to_version"] == 1
    assert (result.path / "assets" / "tokenizer.json").is_file()
    model = shipyard.load(repo / "minilm", version=2)
    try:
        outputs = model.infer({name: value[:2] for name, value in data.items()})
    finally:
        model.close()
    assert all(len(value) == 2 for value in outputs.values())
