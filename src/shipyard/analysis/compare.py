"""Candidate vs baseline on the same rows: metric deltas per slice with seeded-bootstrap
confidence intervals, and the flip rate of predicted labels.

The bootstrap draws one [resamples, rows] index matrix per slice from a numpy Generator
seeded by (seed, slice key), so a rerun gives the same intervals to the last digit and a
slice's interval does not depend on which other slices were asked for. Both models are
scored on the same resampled rows (a paired bootstrap). Classification's accuracy, macro
precision/recall/F1, ROC-AUC and flip rate come from each resample's row multiplicities
(shipyard.analysis.bootstrap); MAE and RMSE from the index matrix (shipyard.analysis.resample),
both checked against scikit-learn resample by resample; the others are computed per resample
by scikit-learn. Slices are bootstrapped on a small thread pool (numpy releases the GIL).
"""

from __future__ import annotations

import math
import os
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shipyard.analysis.bootstrap import FLIP, draws, weighted_samples
from shipyard.analysis.evaluate import Predictions, Task
from shipyard.analysis.metrics import metrics_for, single_metric
from shipyard.analysis.resample import per_resample

PRIMARY: dict[Task, tuple[str, ...]] = {
    "classification": ("accuracy", "f1_macro", "roc_auc"),
    "regression": ("mae", "rmse", "r2"),
    "embedding": (),
}
THREADS = min(4, os.cpu_count() or 1)
_T = TypeVar("_T")
_R = TypeVar("_R")


def in_threads(fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """`[fn(i) for i in items]` on up to THREADS threads (in order).

    Warnings are ignored while the threads run: the metrics silence scikit-learn's with
    `warnings.catch_warnings`, which swaps process-wide state and is not thread-safe, so
    without a process-wide "ignore" one thread's exit would unsilence another's."""
    if THREADS <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ThreadPoolExecutor(max_workers=min(THREADS, len(items))) as pool:
            return list(pool.map(fn, items))


class BootstrapConfig(BaseModel):
    """How the intervals are drawn; the `[bootstrap]` table of the eval config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resamples: int = Field(default=500, ge=10, le=100_000)
    seed: int = Field(default=0, ge=0)
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0)
    metrics: tuple[str, ...] | None = None
    """Metrics given intervals (default: the task's main ones, plus any a threshold names)."""


class MetricDelta(BaseModel):
    model_config = ConfigDict(frozen=True)

    candidate: float
    baseline: float
    delta: float
    """candidate − baseline."""
    low: float | None = None
    high: float | None = None
    """The bootstrap interval of the delta (None: not bootstrapped or undefined)."""


class SliceComparison(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    rows: int
    deltas: dict[str, MetricDelta]
    flip_rate: MetricDelta | None = None
    """Share of rows whose predicted label differs (classification): candidate = the rate."""


class Comparison(BaseModel):
    model_config = ConfigDict(frozen=True)

    baseline_version: int
    resamples: int
    seed: int
    confidence: float
    overall: SliceComparison
    slices: list[SliceComparison]


def compare(
    candidate: Predictions,
    baseline: Predictions,
    labels: np.ndarray | None,
    *,
    slices: Sequence[tuple[str, np.ndarray]],
    baseline_version: int,
    config: BootstrapConfig,
    extra_metrics: Sequence[str] = (),
    scored: Mapping[str, tuple[Mapping[str, float], Mapping[str, float]]] | None = None,
) -> Comparison:
    """Deltas overall and for each `(key, rows)` slice; see the module docstring.

    `scored`: (candidate, baseline) metrics per slice key ("overall" for all rows) already
    computed by the caller with `metrics_for`, so they are not computed twice.
    """
    wanted = tuple(dict.fromkeys((*(config.metrics or PRIMARY[candidate.task]), *extra_metrics)))
    work = [("overall", np.arange(_rows(candidate))), *slices]
    known = scored or {}

    def one(item: tuple[str, np.ndarray]) -> SliceComparison:
        key, rows = item
        return _compare_rows(candidate, baseline, labels, key, rows, wanted, config, known.get(key))

    done = in_threads(one, work)
    return Comparison(
        baseline_version=baseline_version,
        resamples=config.resamples,
        seed=config.seed,
        confidence=config.confidence,
        overall=done[0],
        slices=done[1:],
    )


def bootstrap_indices(rows: np.ndarray, key: str, config: BootstrapConfig) -> np.ndarray:
    """[resamples, len(rows)] row indices drawn with replacement, seeded by (seed, key)."""
    rng = np.random.default_rng([config.seed, zlib.crc32(key.encode())])
    picks = rng.integers(0, len(rows), size=(config.resamples, len(rows)))
    drawn: np.ndarray = rows[picks]
    return drawn


def index_blocks(rows: np.ndarray, key: str, config: BootstrapConfig) -> Iterator[np.ndarray]:
    """The rows of `bootstrap_indices(rows, key, config)`, a block of resamples at a time (the
    same values in the same order; memory near BLOCK_CELLS whatever the slice size: the whole
    matrix is 4 GB for 500 resamples of 1M rows)."""
    for block in draws(len(rows), key, seed=config.seed, resamples=config.resamples):
        yield rows[block]


def _compare_rows(
    cand: Predictions,
    base: Predictions,
    labels: np.ndarray | None,
    key: str,
    rows: np.ndarray,
    wanted: Sequence[str],
    config: BootstrapConfig,
    scored: tuple[Mapping[str, float], Mapping[str, float]] | None = None,
) -> SliceComparison:
    y = None if labels is None else labels[rows]
    if scored is None:
        scored = (
            metrics_for(cand.take(rows), y, base.take(rows)),
            metrics_for(base.take(rows), y, base.take(rows)),
        )
    c_metrics, b_metrics = scored
    names = [n for n in c_metrics if n in b_metrics and n in wanted]
    fast = weighted_samples(
        cand, base, labels, rows, key, names, seed=config.seed, resamples=config.resamples
    )
    deltas: dict[str, MetricDelta] = {}
    for name in c_metrics:
        if name not in b_metrics:
            continue
        low = high = None
        if name in wanted:
            samples = fast.get(name)
            if samples is None:
                samples = np.concatenate(
                    [
                        _delta_samples(name, cand, base, labels, block)
                        for block in index_blocks(rows, key, config)
                    ]
                )
            low, high = _interval(samples, config.confidence)
        deltas[name] = MetricDelta(
            candidate=c_metrics[name],
            baseline=b_metrics[name],
            delta=c_metrics[name] - b_metrics[name],
            low=low,
            high=high,
        )
    flip = None
    if cand.task == "classification" and cand.predicted is not None and base.predicted is not None:
        flipped = (cand.predicted != base.predicted).astype(np.float64)
        flips = fast.get(FLIP)
        if flips is None:
            flips = np.concatenate(
                [flipped[block].mean(axis=1) for block in index_blocks(rows, key, config)]
            )
        low, high = _interval(flips, config.confidence)
        rate = float(flipped[rows].mean())
        flip = MetricDelta(candidate=rate, baseline=0.0, delta=rate, low=low, high=high)
    return SliceComparison(key=key, rows=len(rows), deltas=deltas, flip_rate=flip)


def _delta_samples(
    name: str,
    cand: Predictions,
    base: Predictions,
    labels: np.ndarray | None,
    index: np.ndarray,
) -> np.ndarray:
    if labels is not None:
        c_fast = per_resample(name, cand, labels, index)
        b_fast = per_resample(name, base, labels, index)
        if c_fast is not None and b_fast is not None:
            result: np.ndarray = c_fast - b_fast
            return result
    values = np.empty(len(index))
    for i, rows in enumerate(index):
        y = None if labels is None else labels[rows]
        if cand.task == "embedding":
            c = metrics_for(cand.take(rows), y, base.take(rows)).get(name, math.nan)
            values[i] = c - 1.0
        else:
            values[i] = single_metric(name, cand.take(rows), y) - single_metric(
                name, base.take(rows), y
            )
    return values


def _interval(samples: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    finite = samples[np.isfinite(samples)]
    if len(finite) < max(10, len(samples) // 2):
        return None, None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return float(low), float(high)


def _rows(p: Predictions) -> int:
    for value in (p.predicted, p.embedding, p.scores):
        if value is not None:
            return len(value)
    return 0
