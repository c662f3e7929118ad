"""analyze(): evaluate a version on labelled data, overall and per slice, against a baseline
version, and validate the result against the eval config's thresholds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict
from sklearn import metrics as skm

from shipyard.analysis import metrics as m
from shipyard.analysis.compare import Comparison, compare, in_threads
from shipyard.analysis.data import DataSource, EvalData, read_eval_data
from shipyard.analysis.errors import AnalysisConfigError, AnalysisDataError
from shipyard.analysis.evaluate import (
    DEFAULT_BATCH,
    Predictions,
    Task,
    TaskChoice,
    detect_task,
    read_predictions,
    run_batches,
)
from shipyard.analysis.slices import Slice, slice_rows
from shipyard.analysis.validate import OVERALL, EvalConfig, ValidationResult, validate
from shipyard.errors import ShipyardError
from shipyard.package.manifest import MODEL_FILE, read_manifest
from shipyard.package.store import list_versions, resolve_version_dir

CURVE_POINTS = 200


class DataInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: str
    sha256: str
    rows: int
    label: str | None


class SliceResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    spec: str
    rows: int
    metrics: dict[str, float]


class Curve(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    x: list[float]
    y: list[float]
    area: float


class Details(BaseModel):
    """What the report draws: confusion matrix, calibration, ROC/PR curves, residuals."""

    model_config = ConfigDict(frozen=True)

    classes: list[Any] = []
    confusion: list[list[int]] = []
    calibration: dict[str, list[float]] = {}
    roc: list[Curve] = []
    pr: list[Curve] = []
    residuals: list[float] = []


class VersionFigures(BaseModel):
    """One version of the model as its manifest (and this analysis) measured it."""

    model_config = ConfigDict(frozen=True)

    version: int
    parent: int | None
    steps: list[str]
    model_bytes: int | None
    latency_p50_ms: float | None
    accuracy: float | None
    accuracy_source: str | None
    blessed: bool | None


class AnalysisResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    version: int
    path: str
    task: Task
    data: DataInfo
    overall: dict[str, float]
    slices: list[SliceResult]
    skipped: dict[str, int]
    baseline_version: int | None = None
    baseline_overall: dict[str, float] = {}
    comparison: Comparison | None = None
    validation: ValidationResult | None = None
    details: Details = Details()
    versions: list[VersionFigures] = []

    def slice_metrics(self) -> dict[str, dict[str, float]]:
        return {OVERALL: self.overall, **{s.key: s.metrics for s in self.slices}}


def analyze(
    model: str | Path,
    *,
    data: DataSource,
    label: str | None = None,
    version: int | None = None,
    slices: Sequence[str] = (),
    baseline: int | None = None,
    config: EvalConfig | None = None,
    task: TaskChoice | None = None,
    features: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> AnalysisResult:
    """Evaluate `model` (a model folder: latest or `version`; or a version folder) on `data`.

    Slices come from `slices` plus the config's; with `baseline` (a version number of the
    same model) both run on the same rows and the deltas get bootstrap intervals; with a
    config its thresholds are checked (`result.validation`).
    """
    import shipyard

    config = config or EvalConfig()
    settings = config.analysis
    version_dir = resolve_version_dir(Path(model), version)
    candidate = shipyard.load(version_dir)
    try:
        evaluated = read_eval_data(
            data, candidate.inputs, label=label or settings.label, features=features
        )
        chosen = detect_task(candidate, evaluated.labels, task or settings.task)
        if chosen != "embedding" and evaluated.labels is None:
            raise AnalysisDataError(
                f"{evaluated.source}: {chosen} needs labels; name the label column (--label)"
            )
        if chosen == "embedding" and baseline is None:
            raise AnalysisConfigError(
                "an embedding model is evaluated against a reference model: pass --baseline N"
            )
        cand = _predict(candidate, evaluated, chosen, batch_size)
    finally:
        candidate.close()
    base: Predictions | None = None
    base_dir: Path | None = None
    if baseline is not None:
        base_dir = resolve_version_dir(version_dir.parent, baseline)
        reference = shipyard.load(base_dir)
        try:
            base = _predict(reference, evaluated, chosen, batch_size)
        finally:
            reference.close()
    slicing = slice_rows(
        evaluated.columns,
        list(dict.fromkeys((*slices, *settings.slices))),
        min_size=settings.min_slice_size,
        bins=settings.bins,
    )
    labels = evaluated.labels
    overall, base_overall, per_slice = _score(cand, base, labels, slicing.slices)
    slice_results = [
        SliceResult(key=s.key, spec=s.spec, rows=s.size, metrics=per_slice[s.key][0])
        for s in slicing.slices
    ]
    comparison = None
    if base is not None and baseline is not None:
        comparison = compare(
            cand,
            base,
            labels,
            slices=[(s.key, s.rows) for s in slicing.slices],
            baseline_version=baseline,
            config=config.bootstrap,
            extra_metrics=[t.metric for t in config.thresholds],
            scored={OVERALL: (overall, base_overall), **per_slice},
        )
        overall = _with_flips(overall, comparison.overall.flip_rate)
        slice_results = [
            s.model_copy(update={"metrics": _with_flips(s.metrics, c.flip_rate)})
            for s, c in zip(slice_results, comparison.slices, strict=True)
        ]
    result = AnalysisResult(
        model=cand_name(version_dir),
        version=int(version_dir.name) if version_dir.name.isdigit() else 0,
        path=str(version_dir),
        task=chosen,
        data=DataInfo(
            source=evaluated.source,
            sha256=evaluated.sha256,
            rows=evaluated.rows,
            label=label or settings.label,
        ),
        overall=overall,
        slices=slice_results,
        skipped=slicing.skipped,
        baseline_version=baseline,
        baseline_overall=base_overall,
        comparison=comparison,
        details=_details(cand, labels),
    )
    validation = None
    if config.thresholds:
        validation = validate(
            config.thresholds, result.slice_metrics(), comparison, skipped=slicing.skipped
        )
    return result.model_copy(
        update={"validation": validation, "versions": version_table(version_dir, result)}
    )


def cand_name(version_dir: Path) -> str:
    return read_manifest(version_dir).name


def version_table(version_dir: Path, result: AnalysisResult | None = None) -> list[VersionFigures]:
    """Size, latency and accuracy of every version of the model, from the manifests'
    `measured` figures (written by compress) and, for the versions analysed now, this run."""
    rows = []
    evaluated: dict[int, float] = {}
    if result is not None and "accuracy" in result.overall:
        evaluated[result.version] = result.overall["accuracy"]
        if result.baseline_version is not None and "accuracy" in result.baseline_overall:
            evaluated[result.baseline_version] = result.baseline_overall["accuracy"]
    latency: dict[int, float] = {}
    manifests = {}
    for number in list_versions(version_dir.parent):
        try:
            manifests[number] = read_manifest(version_dir.parent / str(number))
        except ShipyardError:
            continue  # a broken version is inspect's business, not the report's
    for manifest in manifests.values():
        measured = manifest.measured
        base = measured.get("baseline") or {}
        parent = measured.get("compared_to_version")
        if isinstance(parent, int) and isinstance(base, dict) and "latency_p50_ms" in base:
            latency.setdefault(parent, base["latency_p50_ms"])
    for number, manifest in manifests.items():
        cand = manifest.measured.get("candidate") or {}
        acc: float | None = evaluated.get(number)
        source = "this analysis" if acc is not None else None
        if acc is None and isinstance(cand, dict) and cand.get("accuracy") is not None:
            acc, source = float(cand["accuracy"]), "compress"
        entry = manifest.files.get(MODEL_FILE)
        lat = cand.get("latency_p50_ms") if isinstance(cand, dict) else None
        blessing = getattr(manifest, "blessing", None)
        rows.append(
            VersionFigures(
                version=number,
                parent=manifest.lineage.parent,
                steps=[s.op for s in manifest.lineage.steps],
                model_bytes=entry.size if entry else None,
                latency_p50_ms=lat if lat is not None else latency.get(number),
                accuracy=acc,
                accuracy_source=source,
                blessed=None if blessing is None else bool(blessing.ok),
            )
        )
    return rows


def _score(
    cand: Predictions,
    base: Predictions | None,
    labels: np.ndarray | None,
    slices: Sequence[Slice],
) -> tuple[
    dict[str, float], dict[str, float], dict[str, tuple[dict[str, float], dict[str, float]]]
]:
    """(candidate overall, baseline overall, per slice key (candidate, baseline)), each
    computed once and shared by the result and the comparison; slices on a thread pool."""

    def both(rows: np.ndarray | None) -> tuple[dict[str, float], dict[str, float]]:
        c = cand if rows is None else cand.take(rows)
        b = None if base is None else (base if rows is None else base.take(rows))
        y = labels if labels is None or rows is None else labels[rows]
        return m.metrics_for(c, y, b), {} if b is None else m.metrics_for(b, y, b)

    work: list[np.ndarray | None] = [None, *(s.rows for s in slices)]
    done = in_threads(both, work)
    (overall, base_overall), rest = done[0], done[1:]
    return overall, base_overall, {s.key: r for s, r in zip(slices, rest, strict=True)}


def _predict(model: Any, data: EvalData, task: Task, batch_size: int) -> Predictions:
    outputs = run_batches(model, data.inputs, batch_size=batch_size)
    return read_predictions(model, outputs, task, data.labels)


def _with_flips(metrics: dict[str, float], flip: Any) -> dict[str, float]:
    return metrics if flip is None else {**metrics, "flip_rate": flip.candidate}


def _details(pred: Predictions, labels: np.ndarray | None) -> Details:
    if labels is None:
        return Details()
    if pred.task == "regression" and pred.predicted is not None:
        return Details(residuals=[float(v) for v in pred.predicted - labels.astype(np.float64)])
    if pred.task != "classification" or pred.predicted is None:
        return Details()
    classes = pred.classes
    matrix = m.confusion(labels, pred.predicted, classes)
    details: dict[str, Any] = {
        "classes": [_plain(c) for c in classes],
        "confusion": matrix.tolist(),
    }
    if pred.scores is not None:
        cal = m.calibration(labels, pred.scores, classes)
        details["calibration"] = {
            "confidence": cal.confidence,
            "accuracy": cal.accuracy,
            "counts": [float(c) for c in cal.counts],
        }
        details["roc"], details["pr"] = _curves(labels, pred.scores, classes)
    return Details(**details)


def _curves(
    labels: np.ndarray, scores: np.ndarray, classes: list[Any]
) -> tuple[list[Curve], list[Curve]]:
    """One-vs-rest ROC and PR curves (binary: the positive class only), thinned for drawing."""
    picked = [1] if len(classes) == 2 else list(range(len(classes)))
    roc, pr = [], []
    for index in picked:
        truth = labels == classes[index]
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = skm.roc_curve(truth, scores[:, index])
        precision, recall, _ = skm.precision_recall_curve(truth, scores[:, index])
        name = str(_plain(classes[index]))
        roc.append(_curve(name, fpr, tpr, float(skm.roc_auc_score(truth, scores[:, index]))))
        ap = float(skm.average_precision_score(truth, scores[:, index]))
        pr.append(_curve(name, recall, precision, ap))
    return roc, pr


def _curve(name: str, x: np.ndarray, y: np.ndarray, area: float) -> Curve:
    keep = np.unique(np.linspace(0, len(x) - 1, min(len(x), CURVE_POINTS)).round().astype(int))
    return Curve(name=name, x=[float(v) for v in x[keep]], y=[float(v) for v in y[keep]], area=area)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
