"""What a compression run reports: progress events, candidate outcomes and the result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from shipyard.compression.config import Budget
from shipyard.compression.report import ComparisonReport
from shipyard.compression.steps import AppliedStep
from shipyard.package.manifest import Manifest

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
    throughput_low: float | None = None
    throughput_high: float | None = None
    """Min–max of the throughput ratio over blocks of interleaved rounds."""
    speed_significant: bool | None = None
    """False when the throughput spread covers 1.0: no measurable speed difference."""
    worse: list[str] = []
    """Figures worse than the parent's (ComparisonReport.worse)."""


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
    budget: Budget | None = None
    """The budget checked; `Budget()` (nothing checked) after an explicit opt-out."""
    default_budget: bool = False
    """True when no budget was given and `Budget.default` was applied."""
    decision: str = ""
    """Why this candidate was kept, when several were tried (`auto`)."""
