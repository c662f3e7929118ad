"""compress() and compare(): apply a config, measure against the parent, keep or reject.

A candidate within the budget becomes a new version (atomic write) whose lineage and
measured figures point back to its parent; one over budget is kept under the model's
hidden `.rejected/` folder with its report, where no repository or server will load it.
`pack_derived()` (in `derived`) does the same for a model compressed in its framework.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from shipyard.compression.choice import choose
from shipyard.compression.config import (
    AUTO_DEFAULT_DROP,
    NO_BUDGET,
    AnyConfig,
    Budget,
    MeasureConfig,
    has_class_output,
    resolve_budget,
)
from shipyard.compression.data import DataLike, Dataset, synthetic_dataset
from shipyard.compression.derived import pack_derived
from shipyard.compression.errors import CompressionConfigError, CompressionError
from shipyard.compression.measure import measure_pair
from shipyard.compression.raw import load_data, same_processing
from shipyard.compression.report import ComparisonReport
from shipyard.compression.results import (
    CandidateOutcome,
    CompressResult,
    Progress,
    ProgressEvent,
    Stage,
)
from shipyard.compression.steps import AppliedStep, Candidate, apply_steps, plan
from shipyard.compression.versions import (
    StepRecord,
    measured_figures,
    reject_candidate,
    verified_copy,
    write_child,
)
from shipyard.errors import UsageError
from shipyard.package.manifest import Manifest
from shipyard.package.store import REJECTED_DIR, read_verified, resolve_version_dir
from shipyard.package.warmup import read_sample

__all__ = [
    "AUTO_DEFAULT_DROP",
    "NO_BUDGET",
    "REJECTED_DIR",
    "CandidateOutcome",
    "CompressResult",
    "Progress",
    "ProgressEvent",
    "Stage",
    "compare",
    "compress",
    "pack_derived",
    "resolve_budget",
    "verified_copy",
]


@dataclass
class _Trial:
    candidate: Candidate
    model: Path
    steps: list[AppliedStep]
    report: ComparisonReport
    reasons: list[str]

    def records(self) -> list[StepRecord]:
        """(op, config) of each step, as the lineage and the rejection report record them."""
        return [(s.op, s.lineage_config()) for s in self.steps]


def compress(
    model_dir: str | Path,
    *,
    config: AnyConfig,
    repo: str | Path | None = None,
    version: int | None = None,
    eval_data: DataLike | None = None,
    calibration: DataLike | None = None,
    max_drop: float | Budget | None = None,
    measure: MeasureConfig | None = None,
    progress: Progress | None = None,
) -> CompressResult:
    """Compress a model version (latest unless `version`) and write the result as a new one.

    `max_drop` is an absolute accuracy drop when `eval_data` has labels (key `y`), else a
    drop in mean cosine similarity from 1.0; pass a Budget for explicit limits. Without one
    the default budget applies (`Budget.default`: top-1 agreement >= 0.99 for class outputs,
    else mean cosine >= 0.99, plus accuracy drop <= 0.01 with labels); `NO_BUDGET` opts out.
    A candidate over budget is kept under `.rejected/`, never written as a version. The new
    version goes to `repo` (default: the parent's).
    """
    settings = measure or MeasureConfig()
    source_dir = resolve_version_dir(Path(model_dir), version)
    parent = read_verified(source_dir)
    if parent.external_data:
        raise UsageError(
            f"{source_dir}: this model keeps its weights in external data files "
            f"({', '.join(parent.external_data)}), which compress does not handle yet; quantize "
            "it with onnxruntime.quantization (use_external_data_format=True) and pack the result"
        )
    evalset = _dataset(eval_data, parent, source_dir, "eval")
    calib = _dataset(calibration, parent, source_dir, "calibration")
    sample = (
        evalset or calib or _stored_sample(source_dir, parent) or synthetic_dataset(parent.inputs)
    )
    budget, default_budget = resolve_budget(
        max_drop,
        labelled=evalset is not None and evalset.labels is not None,
        classes=has_class_output(parent.outputs, parent.metadata),
    )
    target_repo = Path(repo) if repo is not None else source_dir.parent.parent
    outcomes: list[CandidateOutcome] = []
    trials: list[_Trial] = []
    with tempfile.TemporaryDirectory(prefix="shipyard-compress-") as tmp:
        parent_model = verified_copy(source_dir, parent, Path(tmp) / "parent.onnx")
        candidates = plan(config, onnx.load(str(parent_model)), has_calibration=calib is not None)
        for index, candidate in enumerate(candidates):
            _emit(progress, "compress", candidate.name, index, len(candidates))
            out = Path(tmp) / f"candidate{index}.onnx"
            try:
                applied = apply_steps(parent_model, out, candidate.steps, calibration=calib)
            except (CompressionError, CompressionConfigError) as exc:
                if len(candidates) == 1:
                    raise
                outcomes.append(
                    CandidateOutcome(
                        name=candidate.name, within_budget=False, reasons=[], error=str(exc)
                    )
                )
                continue
            _emit(progress, "measure", candidate.name, index, len(candidates))
            report = measure_pair(
                parent_model,
                out,
                specs=parent.inputs,
                data=sample,
                settings=settings,
                labels=(f"v{parent.version}", candidate.name),
                processing=parent.processing,
            )
            reasons = report.violations(budget)
            trials.append(_Trial(candidate, out, applied, report, reasons))
            outcomes.append(_outcome(trials[-1]))
        if not trials:
            errors = "; ".join(o.error or "" for o in outcomes)
            raise CompressionError("auto", f"every candidate failed: {errors}")
        _emit(progress, "write", "", len(candidates), len(candidates))
        within = [t for t in trials if not t.reasons]
        if within:
            pick, decision = choose([t.report for t in within], [t.candidate.name for t in within])
            searched = len(candidates) > 1
            result = _accept(
                within[pick],
                parent,
                source_dir,
                target_repo,
                budget,
                outcomes,
                decision=decision if searched else "",
            )
        else:
            worst_first = sorted(trials, key=lambda t: t.report.fidelity.mean_cosine)
            result = _reject(worst_first[-1], parent, target_repo, budget, outcomes)
        result.budget, result.default_budget = budget, default_budget
        return result


def compare(
    model_dir: str | Path,
    v1: int,
    v2: int,
    *,
    eval_data: DataLike | None = None,
    measure: MeasureConfig | None = None,
) -> ComparisonReport:
    """Measure two versions of a model side by side (v1 is the baseline)."""
    model_path = Path(model_dir)
    first_dir = resolve_version_dir(model_path, v1)
    second_dir = resolve_version_dir(model_path, v2)
    first = read_verified(first_dir)
    second = read_verified(second_dir)
    data = _dataset(eval_data, first, first_dir, "eval") or synthetic_dataset(first.inputs)
    if data.raw is not None and not same_processing(first, second):
        raise CompressionConfigError(
            f"versions {v1} and {v2} of {first.name} process raw inputs differently (their "
            "processing or tokenizer differ), so one raw eval set cannot feed both: compare "
            "them on graph tensors (.npz)"
        )
    with tempfile.TemporaryDirectory(prefix="shipyard-compare-") as tmp:
        return measure_pair(
            verified_copy(first_dir, first, Path(tmp) / "v1.onnx"),
            verified_copy(second_dir, second, Path(tmp) / "v2.onnx"),
            specs=first.inputs,
            data=data,
            settings=measure or MeasureConfig(),
            labels=(f"v{v1}", _version_label(v2, first, second)),
            processing=first.processing,
        )


def _version_label(number: int, base: Manifest, other: Manifest) -> str:
    """`v2 (int8-dynamic per-channel)`: the version and the methods its lineage adds to the
    baseline's, so a report says what was compared, not only two numbers."""
    before, after = base.lineage.steps, other.lineage.steps
    same = len(before) <= len(after) and all(
        a.op == b.op and a.config == b.config for a, b in zip(before, after, strict=False)
    )
    added = after[len(before) :] if same else after[-1:]
    methods = []
    for step in added:
        if step.op in ("pack", "import", "export"):
            continue
        method = str(step.config.get("method", step.op))
        if "per_channel" in step.config:
            method += " per-channel" if step.config["per_channel"] else " per-tensor"
        methods.append(method)
    return f"v{number} ({' + '.join(methods)})" if methods else f"v{number}"


def _accept(
    trial: _Trial,
    parent: Manifest,
    source_dir: Path,
    repo: Path,
    budget: Budget,
    outcomes: list[CandidateOutcome],
    *,
    decision: str,
) -> CompressResult:
    """Write the kept candidate; after a search (`decision` says why this one) the manifest's
    measured figures record every candidate tried and the decision."""
    measured = measured_figures(parent, trial.report, budget)
    if decision:
        measured["candidates"] = [o.model_dump(mode="json") for o in outcomes]
        measured["decision"] = decision
    path, sealed = write_child(
        trial.model, parent, source_dir, repo, records=trial.records(), measured=measured
    )
    return CompressResult(
        accepted=True,
        path=path,
        candidate=trial.candidate.name,
        report=trial.report,
        manifest=sealed,
        steps=trial.steps,
        candidates=outcomes,
        decision=decision,
    )


def _reject(
    trial: _Trial,
    parent: Manifest,
    repo: Path,
    budget: Budget,
    outcomes: list[CandidateOutcome],
) -> CompressResult:
    result = reject_candidate(
        trial.model,
        candidate=trial.candidate.name,
        records=trial.records(),
        report=trial.report,
        reasons=trial.reasons,
        parent=parent,
        repo=repo,
        budget=budget,
        outcomes=outcomes,
    )
    result.steps = trial.steps
    return result


def _outcome(trial: _Trial) -> CandidateOutcome:
    report = trial.report
    spread = report.throughput_spread
    return CandidateOutcome(
        name=trial.candidate.name,
        within_budget=not trial.reasons,
        reasons=trial.reasons,
        size_ratio=report.size_ratio,
        throughput_ratio=report.throughput_ratio,
        latency_speedup=report.latency_speedup,
        mean_cosine=report.fidelity.mean_cosine,
        accuracy_drop=report.accuracy_drop,
        throughput_low=None if spread is None else spread.low,
        throughput_high=None if spread is None else spread.high,
        speed_significant=None if spread is None else spread.significant,
        worse=report.worse,
    )


def _dataset(
    data: DataLike | None, manifest: Manifest, version_dir: Path, what: str
) -> Dataset | None:
    """Graph tensors, or raw texts/images through the version's processing (`raw`)."""
    return None if data is None else load_data(data, manifest, version_dir, what=what)


def _stored_sample(version_dir: Path, manifest: Manifest) -> Dataset | None:
    """The version's warm-up sample (real or known to run) when no data was given."""
    if manifest.warmup is None:
        return None
    inputs = read_sample(version_dir, manifest.warmup)
    if any(a.ndim == 0 for a in inputs.values()):
        return None  # datasets are rows along dim 0; a scalar input has none
    return Dataset(inputs, source="stored sample")


def _emit(progress: Progress | None, stage: Stage, name: str, index: int, total: int) -> None:
    if progress is not None:
        progress(ProgressEvent(stage=stage, candidate=name, index=index, total=total))
