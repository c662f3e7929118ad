"""pack_derived(): pack a model compressed in its framework as a measured child version.

A PyTorch module pruned and fine-tuned from a packed version is packed, measured against
the version it came from and written as that version's child (or rejected, like compress()).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shipyard.compression.config import Budget, MeasureConfig, has_class_output, resolve_budget
from shipyard.compression.data import DataLike, synthetic_dataset
from shipyard.compression.errors import CompressionConfigError
from shipyard.compression.measure import measure_pair
from shipyard.compression.raw import load_data
from shipyard.compression.results import CompressResult
from shipyard.compression.versions import (
    measured_figures,
    reject_candidate,
    verified_copy,
    write_child,
)
from shipyard.importers.samples import SampleLike
from shipyard.package.conversion import Tolerance
from shipyard.package.manifest import MODEL_FILE, Manifest
from shipyard.package.store import read_verified, resolve_version_dir
from shipyard.package.tensorspec import TensorSpec


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
    evalset = None if eval_data is None else load_data(eval_data, base, source_dir, what="eval")
    sample = evalset or synthetic_dataset(base.inputs)
    budget, default_budget = resolve_budget(
        max_drop,
        labelled=evalset is not None and evalset.labels is not None,
        classes=has_class_output(base.outputs, base.metadata),
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
            processing=base.processing,
        )
        records = [(op, dict(config))]
        reasons = report.violations(budget)
        if reasons:
            rejected = reject_candidate(
                child_model,
                candidate=op,
                records=records,
                report=report,
                reasons=reasons,
                parent=base,
                repo=target_repo,
                budget=budget,
                outcomes=[],
            )
            rejected.default_budget = default_budget
            return rejected
        extra: dict[str, bytes | Path] = {
            rel: packed.path / rel for rel in packed.manifest.files if rel != MODEL_FILE
        }
        path, sealed = write_child(
            child_model,
            base,
            source_dir,
            target_repo,
            records=records,
            measured=measured_figures(base, report, budget),
            update={
                "source": packed.manifest.source,
                "conversion_check": packed.manifest.conversion_check,
                "metadata": {**base.metadata, **(metadata or {})},
            },
            extra_files=extra,
        )
    return CompressResult(
        accepted=True,
        path=path,
        candidate=op,
        report=report,
        manifest=sealed,
        budget=budget,
        default_budget=default_budget,
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
