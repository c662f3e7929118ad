"""What a side-by-side measurement found: each model's figures, speed spreads, fidelity.

`ComparisonReport` is what `compress()` records in a child version's `measured` figures and
what `compare()` returns; `shipyard.compression.measure` produces it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, computed_field

from shipyard.compression.config import Budget, MeasureConfig
from shipyard.compression.machine import MachineFacts

SPREAD_BLOCKS = 8
"""Interleaved rounds are cut into this many consecutive blocks; each block gives one
baseline/candidate ratio, and the ratios' min–max is the spread a speed-up must clear."""
WORSE_SPEED = 0.03
"""p50, p99 or throughput this much worse than the baseline's is flagged (3 %)."""
WORSE_MEMORY = 0.10
WORSE_MEMORY_MIB = 1.0
"""Session memory is flagged when it grew by 10 % and at least 1 MiB (RSS is noisy)."""
WORSE_COSINE = 1e-4


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelFigures(_Frozen):
    """One model's figures from a side-by-side run."""

    label: str
    file_bytes: int
    gzip_bytes: int
    latency_p50_ms: float
    latency_p99_ms: float
    throughput_batch: int
    throughput_rows_per_s: float
    session_rss_mb: float | None
    """Growth of the process's resident memory while creating the session and running it."""
    accuracy: float | None
    accuracy_rows: int | None = None
    """Labelled rows the accuracy was computed on: all of the eval data's (None in older
    reports, which used at most `max_rows`)."""


class RatioSpread(_Frozen):
    """Candidate-vs-baseline speed ratios (above 1 = candidate faster), one per block of
    interleaved rounds: the median is the figure, min–max how far it moved while measuring."""

    ratios: list[float]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def median(self) -> float:
        return round(float(np.median(self.ratios)), 4) if self.ratios else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def low(self) -> float:
        return round(min(self.ratios), 4) if self.ratios else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def high(self) -> float:
        return round(max(self.ratios), 4) if self.ratios else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def significant(self) -> bool:
        """True when every block agrees on the direction: the spread does not cover 1.0."""
        return bool(self.ratios) and (self.low > 1.0 or self.high < 1.0)

    def describe(self) -> str:
        verdict = "" if self.significant else ", not significant"
        return f"{self.median:.2f}× ({self.low:.2f}–{self.high:.2f}{verdict})"

    @classmethod
    def from_times(
        cls, baseline: Sequence[float], candidate: Sequence[float], blocks: int = SPREAD_BLOCKS
    ) -> RatioSpread:
        """Ratios of the blocks' median times (baseline / candidate) of interleaved runs."""
        count = min(len(baseline), len(candidate))
        edges = np.linspace(0, count, min(blocks, count) + 1).astype(int)
        ratios = []
        for start, stop in itertools.pairwise(edges):
            cand = float(np.median(candidate[start:stop]))
            ratios.append(round(float(np.median(baseline[start:stop])) / cand, 4) if cand else 0.0)
        return cls(ratios=ratios)


class ServedFidelity(_Frozen):
    """Fidelity of what a client gets from a package that declares processing: both models'
    outputs through the package's post-processing (`shipyard.compression.served`)."""

    source: Literal["tensors", "text", "images"]
    """What the rows were made from: graph tensors as given, or raw texts / images run
    through the parent's processing like requests."""
    rows: int
    embedding_output: str | None = None
    """The [N, D] embedding output as served (text processing's `embedding_output`)."""
    mean_cosine: float | None = None
    min_cosine: float | None = None
    """Cosine of the embedding output alone, row by row."""
    label_output: str | None = None
    """The class-name output the package's labels add (`label`)."""
    label_agreement: float | None = None
    """Share of rows whose post-processed label is the same."""


class Fidelity(_Frozen):
    """How closely the candidate's outputs follow the baseline's, row by row."""

    rows: int
    max_abs_diff: float
    mean_cosine: float
    min_cosine: float
    top1_agreement: float | None
    served: ServedFidelity | None = None
    """The same rows as a client sees them, and what they were made from (packages with
    processing; None otherwise)."""


class ComparisonReport(_Frozen):
    baseline: ModelFigures
    candidate: ModelFigures
    fidelity: Fidelity
    data: str
    """Where the inputs came from: an eval/calibration file, or 'synthetic'."""
    machine: MachineFacts
    settings: MeasureConfig
    latency_spread: RatioSpread | None = None
    """p50 speed-up at batch 1 per block of interleaved rounds (None in older reports)."""
    throughput_spread: RatioSpread | None = None
    """Throughput ratio per block of interleaved rounds (None in older reports)."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def size_ratio(self) -> float:
        """×smaller on disk (baseline size / candidate size)."""
        return _ratio(self.baseline.file_bytes, self.candidate.file_bytes)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def gzip_ratio(self) -> float:
        return _ratio(self.baseline.gzip_bytes, self.candidate.gzip_bytes)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def latency_speedup(self) -> float:
        """Baseline p50 / candidate p50 at batch 1; above 1 means the candidate is faster."""
        return _ratio(self.baseline.latency_p50_ms, self.candidate.latency_p50_ms)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def throughput_ratio(self) -> float:
        return _ratio(self.candidate.throughput_rows_per_s, self.baseline.throughput_rows_per_s)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def accuracy_drop(self) -> float | None:
        if self.baseline.accuracy is None or self.candidate.accuracy is None:
            return None
        return round(self.baseline.accuracy - self.candidate.accuracy, 6)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def worse(self) -> list[str]:
        """The figures in which the candidate is worse than the baseline, beyond noise:
        p50, p99, throughput, session memory, size, fidelity (see the WORSE_* limits)."""
        b, c, f = self.baseline, self.candidate, self.fidelity
        found = []
        if c.latency_p50_ms > b.latency_p50_ms * (1 + WORSE_SPEED):
            found.append("latency p50")
        if c.latency_p99_ms > b.latency_p99_ms * (1 + WORSE_SPEED):
            found.append("latency p99")
        if c.throughput_rows_per_s < b.throughput_rows_per_s * (1 - WORSE_SPEED):
            found.append("throughput")
        if (
            b.session_rss_mb is not None
            and c.session_rss_mb is not None
            and c.session_rss_mb > b.session_rss_mb * (1 + WORSE_MEMORY)
            and c.session_rss_mb - b.session_rss_mb >= WORSE_MEMORY_MIB
        ):
            found.append("session memory")
        if c.file_bytes > b.file_bytes:
            found.append("size")
        if c.gzip_bytes > b.gzip_bytes:
            found.append("gzip size")
        if f.mean_cosine < 1 - WORSE_COSINE:
            found.append("mean cosine")
        if f.top1_agreement is not None and f.top1_agreement < 1.0:
            found.append("top-1 agreement")
        served = f.served
        cosine = served.mean_cosine if served is not None else None
        if cosine is not None and cosine < 1 - WORSE_COSINE:
            found.append("embedding cosine")
        agreement = served.label_agreement if served is not None else None
        if agreement is not None and agreement < 1.0:
            found.append("label agreement")
        drop = self.accuracy_drop
        if drop is not None and drop > 0:
            found.append("accuracy")
        return found

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> ComparisonReport:
        """A report read back from its JSON dump (a version's `measured` figures, a rejected
        candidate's report.json): the computed figures in it are left to be recomputed."""
        return cls.model_validate(_stored(cls, data))

    def violations(self, budget: Budget) -> list[str]:
        """Why the candidate is over `budget`, each reason with the measured value, the limit
        and how far it missed (e.g. "accuracy drop 0.034 exceeds max-drop 0.01 by 0.024");
        empty when it is within."""
        found = []
        drop = self.accuracy_drop
        if budget.max_accuracy_drop is not None:
            limit = budget.max_accuracy_drop
            if drop is None:
                found.append(
                    f"accuracy drop cannot be measured against max-drop {limit:.4g}: an accuracy "
                    "budget needs eval data with labels (y) and a class or score output"
                )
            elif drop > limit + 1e-12:
                found.append(
                    f"accuracy drop {drop:.4g} exceeds max-drop {limit:.4g} by {drop - limit:.4g}"
                )
        served = self.fidelity.served
        cosine, what = self.fidelity.mean_cosine, "mean cosine"
        if served is not None and served.mean_cosine is not None:  # the embedding as served
            cosine, what = served.mean_cosine, f"mean cosine of {served.embedding_output!r}"
        if budget.min_mean_cosine is not None and cosine < budget.min_mean_cosine:
            limit = budget.min_mean_cosine
            found.append(
                f"{what} {cosine:.6g} is below min-cosine {limit:.6g} by {limit - cosine:.4g}"
            )
        agreement, what = self.fidelity.top1_agreement, "top-1 agreement"
        if served is not None and served.label_agreement is not None:  # the labels as served
            agreement, what = served.label_agreement, f"{served.label_output!r} agreement"
        if budget.min_top1_agreement is not None:
            limit = budget.min_top1_agreement
            if agreement is None:
                found.append(
                    f"top-1 agreement cannot be measured against min top-1 agreement {limit:.4g}: "
                    "the outputs are not class scores"
                )
            elif agreement < limit:
                found.append(
                    f"{what} {agreement:.4g} is below min top-1 agreement {limit:.4g} "
                    f"by {limit - agreement:.4g}"
                )
        return found


def _stored(model: type[BaseModel], data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` without `model`'s computed fields, nested models likewise."""
    kept: dict[str, Any] = {}
    for key, value in data.items():
        if key in model.model_computed_fields:
            continue
        field = model.model_fields.get(key)
        annotation = field.annotation if field is not None else None
        nested = [
            t
            for t in (*get_args(annotation), annotation)
            if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        kept[key] = _stored(nested[0], value) if nested and isinstance(value, Mapping) else value
    return kept


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 4) if denominator else 0.0
