"""Version files for compression: read a parent's model, write its measured child or a reject.

A candidate within the budget becomes a new version (atomic write) whose lineage and
measured figures point back to its parent; one over budget is kept under the model's
hidden `.rejected/` folder with its report, where no repository or server will load it.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

from shipyard.compression.config import Budget
from shipyard.compression.report import ComparisonReport
from shipyard.compression.results import CandidateOutcome, CompressResult
from shipyard.errors import IntegrityError
from shipyard.package.graph_specs import default_opset, graph_signature
from shipyard.package.hashing import sha256_file
from shipyard.package.manifest import MODEL_FILE, Lineage, Manifest, Step, now
from shipyard.package.store import keep_rejected, next_version, write_version

StepRecord = tuple[str, dict[str, Any]]
"""(op, config) of one step, as the lineage and the rejection report record it."""


def verified_copy(version_dir: Path, manifest: Manifest, dest: Path) -> Path:
    """Copy a version's model file and re-check its hash, so what the tools read and what
    the manifest vouches for cannot differ (the file may be replaced after verification)."""
    source = version_dir / MODEL_FILE
    shutil.copyfile(source, dest)
    if sha256_file(dest) != manifest.files[MODEL_FILE].sha256:
        raise IntegrityError(str(source), "changed after verification (sha256 mismatch)")
    return dest


def measured_figures(
    parent: Manifest, report: ComparisonReport, budget: Budget | None
) -> dict[str, Any]:
    """The child manifest's `measured`: the report against the parent and the budget used."""
    return {
        "compared_to_version": parent.version,
        **report.model_dump(mode="json"),
        "budget": budget.model_dump(mode="json") if budget else None,
    }


def write_child(
    model: Path,
    parent: Manifest,
    source_dir: Path,
    repo: Path,
    *,
    records: list[StepRecord],
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


def reject_candidate(
    model: Path,
    *,
    candidate: str,
    records: list[StepRecord],
    report: ComparisonReport,
    reasons: list[str],
    parent: Manifest,
    repo: Path,
    budget: Budget | None,
    outcomes: list[CandidateOutcome],
) -> CompressResult:
    """Keep an over-budget candidate under `<repo>/<name>/.rejected/<stamp>/` with a report;
    hidden folders are neither versions nor models to repositories and servers."""
    stamp = now().strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
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
    report_json = (json.dumps(record, indent=2) + "\n").encode()
    final = keep_rejected(
        repo / parent.name, stamp, {MODEL_FILE: model, "report.json": report_json}
    )
    return CompressResult(
        accepted=False,
        path=final,
        candidate=candidate,
        report=report,
        reasons=reasons,
        candidates=outcomes,
        budget=budget,
    )
