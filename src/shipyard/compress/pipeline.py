"""compress() and compare(): apply a config, measure against the parent, keep or reject.

A candidate within the budget becomes a new version (atomic write) whose lineage and
measured figures point back to its parent; one over budget is kept under the model's
hidden `.rejected/` folder with its report, where no repository or server will load it.
`pack_derived()` does the same for a model compressed in its framework (a PyTorch module
pruned and fine-tuned): it is packed, measured against the version it came from and written
as that version's child.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx
from pydantic import BaseModel, ConfigDict

from shipyard.compress.config import AnyConfig, AutoConfig, Budget, MeasureConfig
from shipyard.compress.data import DataLike, Dataset, load_dataset, synthetic_dataset
from shipyard.compress.errors import CompressionConfigError, CompressionError
from shipyard.compress.report import ComparisonReport, measure_pair
from shipyard.compress.steps import AppliedStep, Candidate, apply_steps, plan
from shipyard.errors import IntegrityError
from shipyard.importers.base import Tolerance
from shipyard.importers.samples import SampleLike
from shipyard.package.hashing import sha256_file
from shipyard.package.manifest import MODEL_FILE, Lineage, Manifest, Step, now
from shipyard.package.signature import default_opset, graph_signature
from shipyard.package.store import next_version, read_verified, resolve_version_dir, write_version
from shipyard.package.tensorspec import TensorSpec

REJECTED_DIR = ".rejected"
AUTO_DEFAULT_DROP = 0.01

Stage = Literal["compress", "measure", "write"]


@dataclass(frozen=True)
class ProgressEvent:
    """Reported before each stage of each candidate; `index` counts from 0 of `total`."""

    stage: Stage
    candidate: str
    index: int
    total: int


Progress = Callable[[ProgressEvent], None]


class CandidateOutcome(BaseModel):
    """One candidate tried by `auto`, as recorded in the chosen version's measured figures."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    within_budget: bool
    reasons: list[str]
    size_ratio: float | None = None
    throughput_ratio: float | None = None
    latency_speedup: float | None = None
    mean_cosine: float | None = None
    accuracy_drop: float | None = None
    error: str | None = None


@dataclass
class CompressResult:
    """What compress() did: the version written, or where the rejected candidate went."""

    accepted: bool
    path: Path
    candidate: str
    report: ComparisonReport
    manifest: Manifest | None = None
    reasons: list[str] = field(default_factory=list)
    steps: list[AppliedStep] = field(default_factory=list)
    candidates: list[CandidateOutcome] = field(default_factory=list)


@dataclass
class _Trial:
    candidate: Candidate
    model: Path
    steps: list[AppliedStep]
    report: ComparisonReport
    reasons: list[str]

    def records(self) -> list[tuple[str, dict[str, Any]]]:
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
    drop in mean cosine similarity from 1.0; pass a Budget for explicit limits. `auto`
    defaults to a budget of 0.01. The new version goes to `repo` (default: the parent's).
    """
    settings = measure or MeasureConfig()
    source_dir = resolve_version_dir(Path(model_dir), version)
    parent = read_verified(source_dir)
    evalset = _dataset(eval_data, parent, "eval")
    calib = _dataset(calibration, parent, "calibration")
    sample = evalset or calib or synthetic_dataset(parent.inputs)
    budget = resolve_budget(
        max_drop,
        labelled=evalset is not None and evalset.labels is not None,
        auto=isinstance(config, AutoConfig),
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
            )
            reasons = report.violations(budget) if budget else []
            trials.append(_Trial(candidate, out, applied, report, reasons))
            outcomes.append(_outcome(trials[-1]))
        if not trials:
            errors = "; ".join(o.error or "" for o in outcomes)
            raise CompressionError("auto", f"every candidate failed: {errors}")
        _emit(progress, "write", "", len(candidates), len(candidates))
        within = [t for t in trials if not t.reasons]
        if within:
            best = max(within, key=_speed)
            searched = len(candidates) > 1
            return _accept(best, parent, source_dir, target_repo, budget, outcomes, searched)
        worst_first = sorted(trials, key=lambda t: t.report.fidelity.mean_cosine)
        return _reject(worst_first[-1], parent, target_repo, budget, outcomes)


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
    data = _dataset(eval_data, first, "eval") or synthetic_dataset(first.inputs)
    with tempfile.TemporaryDirectory(prefix="shipyard-compare-") as tmp:
        return measure_pair(
            verified_copy(first_dir, first, Path(tmp) / "v1.onnx"),
            verified_copy(second_dir, second, Path(tmp) / "v2.onnx"),
            specs=first.inputs,
            data=data,
            settings=measure or MeasureConfig(),
            labels=(f"v{v1}", f"v{v2}"),
        )


def pack_derived(
    model: Any,
    *,
    parent: str | Path,
    op: str,
    config: Mapping[str, Any],
    sample_input: SampleLike = None,
    version: int | None = None,
    repo: str | Path | None = None,
    eval_data: DataLike | None = None,
    max_drop: float | Budget | None = None,
    measure: MeasureConfig | None = None,
    metadata: Mapping[str, Any] | None = None,
    tolerance: Tolerance | None = None,
) -> CompressResult:
    """Pack `model` (derived in its framework from `parent`, e.g. channel-pruned and
    fine-tuned) as a child version of the parent model folder (latest unless `version`).

    The model goes through `shipyard.pack` (conversion and its check), must keep the parent's
    input and output names, and is measured against the parent like compress() does; its
    lineage is the parent's steps plus one step `op` with `config`. Within the budget it is
    written as the next version; over it, to `.rejected/`. Metadata is the parent's updated
    with `metadata` (say what changed, e.g. a new test accuracy).
    """
    from shipyard.api import pack

    settings = measure or MeasureConfig()
    source_dir = resolve_version_dir(Path(parent), version)
    base = read_verified(source_dir)
    evalset = _dataset(eval_data, base, "eval")
    sample = evalset or synthetic_dataset(base.inputs)
    budget = resolve_budget(
        max_drop, labelled=evalset is not None and evalset.labels is not None, auto=False
    )
    target_repo = Path(repo) if repo is not None else source_dir.parent.parent
    with tempfile.TemporaryDirectory(prefix="shipyard-derived-") as tmp:
        packed = pack(
            model,
            name=base.name,
            repo=Path(tmp) / "packed",
            sample_input=sample_input,
            tolerance=tolerance,
        )
        _same_signature(base, packed.manifest)
        parent_model = verified_copy(source_dir, base, Path(tmp) / "parent.onnx")
        child_model = verified_copy(packed.path, packed.manifest, Path(tmp) / "child.onnx")
        report = measure_pair(
            parent_model,
            child_model,
            specs=base.inputs,
            data=sample,
            settings=settings,
            labels=(f"v{base.version}", op),
        )
        records = [(op, dict(config))]
        reasons = report.violations(budget) if budget else []
        if reasons:
            return _reject_file(
                child_model, op, records, report, reasons, base, target_repo, budget, []
            )
        extra: dict[str, bytes | Path] = {
            rel: packed.path / rel for rel in packed.manifest.files if rel != MODEL_FILE
        }
        path, sealed = _write_child(
            child_model,
            base,
            source_dir,
            target_repo,
            records=records,
            measured=_measured(base, report, budget),
            update={
                "source": packed.manifest.source,
                "conversion_check": packed.manifest.conversion_check,
                "metadata": {**base.metadata, **(metadata or {})},
            },
            extra_files=extra,
        )
    return CompressResult(accepted=True, path=path, candidate=op, report=report, manifest=sealed)


def verified_copy(version_dir: Path, manifest: Manifest, dest: Path) -> Path:
    """Copy a version's model file and re-check its hash, so what the tools read and what
    the manifest vouches for cannot differ (the file may be replaced after verification)."""
    source = version_dir / MODEL_FILE
    shutil.copyfile(source, dest)
    if sha256_file(dest) != manifest.files[MODEL_FILE].sha256:
        raise IntegrityError(str(source), "changed after verification (sha256 mismatch)")
    return dest


def resolve_budget(max_drop: float | Budget | None, *, labelled: bool, auto: bool) -> Budget | None:
    if isinstance(max_drop, Budget):
        return max_drop
    if max_drop is None:
        return Budget.from_drop(AUTO_DEFAULT_DROP, labelled=labelled) if auto else None
    try:
        return Budget.from_drop(max_drop, labelled=labelled)
    except ValueError as exc:
        raise CompressionConfigError(str(exc)) from exc


def _speed(trial: _Trial) -> tuple[float, float]:
    """Throughput against the parent measured in the same run, so drift between trials
    (other work on the machine) does not pick the winner."""
    return trial.report.throughput_ratio, trial.report.latency_speedup


def _accept(
    trial: _Trial,
    parent: Manifest,
    source_dir: Path,
    repo: Path,
    budget: Budget | None,
    outcomes: list[CandidateOutcome],
    searched: bool,
) -> CompressResult:
    measured = _measured(parent, trial.report, budget)
    if searched:
        measured["candidates"] = [o.model_dump(mode="json") for o in outcomes]
    path, sealed = _write_child(
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
    )


def _measured(parent: Manifest, report: ComparisonReport, budget: Budget | None) -> dict[str, Any]:
    return {
        "compared_to_version": parent.version,
        **report.model_dump(mode="json"),
        "budget": budget.model_dump(mode="json") if budget else None,
    }


def _write_child(
    model: Path,
    parent: Manifest,
    source_dir: Path,
    repo: Path,
    *,
    records: list[tuple[str, dict[str, Any]]],
    measured: dict[str, Any],
    update: dict[str, Any] | None = None,
    extra_files: Mapping[str, bytes | Path] | None = None,
) -> tuple[Path, Manifest]:
    """Write `model` as the next version of the parent's name in `repo`, its lineage pointing
    at the parent; the parent's other files (tokenizer …) come along."""
    proto = onnx.load(str(model))
    inputs, outputs = graph_signature(proto)
    steps = list(parent.lineage.steps) + [Step(op=op, config=cfg, at=now()) for op, cfg in records]
    manifest = parent.model_copy(
        update={
            "version": next_version(repo, parent.name),
            "created": now(),
            "opset": default_opset(proto),
            "inputs": inputs,
            "outputs": outputs,
            "files": {},
            "lineage": Lineage(parent=parent.version, steps=steps),
            "conversion_check": None,
            "measured": measured,
            "digest": "",
            **(update or {}),
        }
    )
    files: dict[str, bytes | Path] = {MODEL_FILE: model}
    for rel in parent.files:
        if not rel.startswith(MODEL_FILE):  # carry assets (tokenizer …), not the old weights
            files[rel] = source_dir / rel
    files.update(extra_files or {})
    return write_version(repo, manifest, files, version_given=False)


def _reject(
    trial: _Trial,
    parent: Manifest,
    repo: Path,
    budget: Budget | None,
    outcomes: list[CandidateOutcome],
) -> CompressResult:
    result = _reject_file(
        trial.model,
        trial.candidate.name,
        trial.records(),
        trial.report,
        trial.reasons,
        parent,
        repo,
        budget,
        outcomes,
    )
    result.steps = trial.steps
    return result


def _reject_file(
    model: Path,
    candidate: str,
    records: list[tuple[str, dict[str, Any]]],
    report: ComparisonReport,
    reasons: list[str],
    parent: Manifest,
    repo: Path,
    budget: Budget | None,
    outcomes: list[CandidateOutcome],
) -> CompressResult:
    """Keep an over-budget candidate under `<repo>/<name>/.rejected/<stamp>/` with a report;
    hidden folders are neither versions nor models to repositories and servers."""
    model_dir = repo / parent.name / REJECTED_DIR
    model_dir.mkdir(parents=True, exist_ok=True)
    stamp = now().strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    tmp = model_dir / f".tmp-{stamp}"
    tmp.mkdir()
    shutil.copyfile(model, tmp / MODEL_FILE)
    record = {
        "name": parent.name,
        "parent_version": parent.version,
        "candidate": candidate,
        "reasons": reasons,
        "budget": budget.model_dump(mode="json") if budget else None,
        "steps": [{"op": op, "config": cfg} for op, cfg in records],
        "report": report.model_dump(mode="json"),
        "candidates": [o.model_dump(mode="json") for o in outcomes],
    }
    (tmp / "report.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    final = model_dir / stamp
    os.rename(tmp, final)
    return CompressResult(
        accepted=False,
        path=final,
        candidate=candidate,
        report=report,
        reasons=reasons,
        candidates=outcomes,
    )


def _same_signature(parent: Manifest, child: Manifest) -> None:
    """The child must answer the same requests: same input and output names."""

    def names(specs: list[TensorSpec]) -> list[str]:
        return [spec.name for spec in specs]

    for what, before, after in (
        ("inputs", names(parent.inputs), names(child.inputs)),
        ("outputs", names(parent.outputs), names(child.outputs)),
    ):
        if before != after:
            raise CompressionConfigError(
                f"the derived model's {what} {after} differ from version {parent.version}'s "
                f"{before}; a child version must keep the names clients send and read"
            )


def _outcome(trial: _Trial) -> CandidateOutcome:
    report = trial.report
    return CandidateOutcome(
        name=trial.candidate.name,
        within_budget=not trial.reasons,
        reasons=trial.reasons,
        size_ratio=report.size_ratio,
        throughput_ratio=report.throughput_ratio,
        latency_speedup=report.latency_speedup,
        mean_cosine=report.fidelity.mean_cosine,
        accuracy_drop=report.accuracy_drop,
    )


def _dataset(data: DataLike | None, manifest: Manifest, what: str) -> Dataset | None:
    return None if data is None else load_dataset(data, manifest.inputs, what=what)


def _emit(progress: Progress | None, stage: Stage, name: str, index: int, total: int) -> None:
    if progress is not None:
        progress(ProgressEvent(stage=stage, candidate=name, index=index, total=total))
