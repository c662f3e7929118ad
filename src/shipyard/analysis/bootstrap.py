"""The paired bootstrap of one slice from row multiplicities: the same draws as
`compare.bootstrap_indices`, one resample at a time, each turned into how often every row
was drawn, so classification metrics come from weighted counts, not [resamples, rows] gathers.

Every value equals what `resample.per_resample` gives on the index matrix, to the last digit:
the weighted sums are sums of integers (exact in float64), and the final divisions are the
same. Accuracy and the flip rate are counts of rows; macro precision/recall/F1 come from the
per-resample confusion counts (the same formula, `resample.macro_from_counts`); ROC-AUC is
the Mann–Whitney statistic with ties counted half, from the negatives' cumulative weight below
and up to each positive's tie group (rows sorted by score once per slice). Memory stays near
`resample.BLOCK_CELLS` draws whatever the slice size.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from shipyard.analysis.evaluate import Predictions
from shipyard.analysis.resample import BLOCK_CELLS, class_codes, macro_from_counts

WEIGHTED = frozenset({"accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc"})
FLIP = "flip_rate"


def draws(count: int, key: str, *, seed: int, resamples: int) -> Iterator[np.ndarray]:
    """Blocks of rows of the [resamples, count] matrix `bootstrap_indices` draws (positions
    0..count-1), in order and with the same values: a Generator's bounded integers continue
    its stream across calls. int64, as np.bincount wants them (int32 would be copied)."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    step = max(1, BLOCK_CELLS // max(1, count))
    for start in range(0, resamples, step):
        yield rng.integers(0, count, size=(min(step, resamples - start), count))


@dataclass(frozen=True)
class _Auc:
    """One score column of one model on the slice's rows, sorted once."""

    pos_order: np.ndarray
    """Slice positions of the positives, by score."""
    neg_order: np.ndarray
    """Slice positions of the negatives, by score."""
    below: np.ndarray
    """Per positive: negatives scored strictly lower."""
    tied: np.ndarray
    """Positives (indices into pos_order) that share their score with a negative."""
    upto: np.ndarray
    """Per tied positive: negatives scored lower or the same."""

    @classmethod
    def build(cls, score: np.ndarray, positive: np.ndarray) -> _Auc:
        order = np.argsort(score, kind="stable")
        s, pos = score[order], positive[order]
        new_group = np.r_[True, s[1:] != s[:-1]]
        starts = np.flatnonzero(new_group)
        group = np.cumsum(new_group) - 1
        ends = np.r_[starts[1:], len(s)]
        neg_before = np.r_[0, np.cumsum(~pos)]  # negatives at sorted positions < j
        at = np.flatnonzero(pos)
        below, upto = neg_before[starts[group[at]]], neg_before[ends[group[at]]]
        tied = np.flatnonzero(upto != below)
        return cls(
            pos_order=order[at],
            neg_order=order[~pos],
            below=below,
            tied=tied,
            upto=upto[tied],
        )

    def terms(self, weights: np.ndarray) -> tuple[int, int, int]:
        """(2 × Σ positive weight × (negatives below + half the tied ones), n_pos, n_neg);
        untied positives count their negatives below twice, tied ones below + up to."""
        cumulative = np.zeros(len(self.neg_order) + 1, dtype=np.int64)
        np.cumsum(weights[self.neg_order], out=cumulative[1:])
        pos = weights[self.pos_order].astype(np.int64)
        twice = 2 * int(np.dot(pos, cumulative[self.below]))
        if len(self.tied):
            twice += int(
                np.dot(pos[self.tied], cumulative[self.upto] - cumulative[self.below[self.tied]])
            )
        return twice, int(pos.sum()), int(cumulative[-1])


class _Model:
    """One model's per-resample figures on the slice: its row attributes (correct, the
    confusion cell) for the shared count table, and its sorted score columns for ROC-AUC."""

    def __init__(self, pred: Predictions, labels: np.ndarray, names: Sequence[str]) -> None:
        assert pred.predicted is not None
        self.names = [n for n in names if n != "roc_auc" or pred.scores is not None]
        classes = pred.classes
        self.k = len(classes)
        self.correct = (pred.predicted == labels).astype(np.int64)
        size = self.k + 1  # one extra code for values outside `classes`
        self.pair = class_codes(labels, classes) * size + class_codes(pred.predicted, classes)
        self.auc: list[_Auc] = []
        if "roc_auc" in self.names and pred.scores is not None:
            columns = [1] if self.k == 2 else list(range(self.k))
            self.auc = [_Auc.build(pred.scores[:, c], labels == classes[c]) for c in columns]

    def finish(
        self, counts: np.ndarray, cells: _Cells, which: int, auc: list[np.ndarray], rows: int
    ) -> dict[str, np.ndarray]:
        """Per-resample values from the [resamples, cells] count table and the AUC terms."""
        result: dict[str, np.ndarray] = {}
        for name in self.names:
            if name == "accuracy":
                result[name] = (counts @ cells.correct[which]) / rows
            elif name == "roc_auc":
                result[name] = _roc_auc(auc)
            else:
                size = self.k + 1
                onehot = np.zeros((len(cells.pair[which]), size * size))
                onehot[np.arange(len(onehot)), cells.pair[which]] = 1.0
                confusion = (counts @ onehot).reshape(-1, size, size)
                result[name] = macro_from_counts(name, confusion, self.k)
        return result


@dataclass(frozen=True)
class _Cells:
    """Rows grouped by everything the count-based figures need (each model's correctness and
    confusion cell, and whether the two disagree): a resample's weighted count per group gives
    accuracy, confusion counts and the flip rate at once, all sums of integers."""

    code: np.ndarray
    """Per row, its group."""
    by_group: np.ndarray
    """Slice positions sorted by group."""
    starts: np.ndarray
    """Where each group begins in `by_group`."""
    correct: tuple[np.ndarray, np.ndarray]
    pair: tuple[np.ndarray, np.ndarray]
    flipped: np.ndarray

    @classmethod
    def build(cls, models: tuple[_Model, _Model], flipped: np.ndarray) -> _Cells:
        parts = (models[0].pair, models[1].pair, models[0].correct, models[1].correct, flipped)
        code = np.zeros(len(flipped), dtype=np.int64)
        for part in parts:
            code, _ = pd.factorize(code * (int(part.max(initial=0)) + 1) + part)
        first = np.unique(code, return_index=True)[1]  # factorize codes are 0..U-1 in order
        by_group = np.argsort(code, kind="stable")
        return cls(
            code=code,
            by_group=by_group,
            starts=np.searchsorted(code[by_group], np.arange(len(first))),
            correct=(models[0].correct[first] * 1.0, models[1].correct[first] * 1.0),
            pair=(models[0].pair[first], models[1].pair[first]),
            flipped=flipped[first] * 1.0,
        )

    def count(self, weights: np.ndarray) -> np.ndarray:
        """Weighted rows per group (a gather from the narrow weights, then sums)."""
        sums: np.ndarray = np.add.reduceat(weights[self.by_group], self.starts, dtype=np.int64)
        return sums


def _narrow(weights: np.ndarray) -> np.ndarray:
    """Multiplicities in the smallest type that holds them: the AUC's gathers in random order
    run several times faster from a table that fits the CPU's cache."""
    top = int(weights.max(initial=0))
    dtype = np.uint8 if top <= 0xFF else np.uint16 if top <= 0xFFFF else np.int64
    return weights.astype(dtype)


def _roc_auc(per_class_terms: list[np.ndarray]) -> np.ndarray:
    per_class = []
    for terms in per_class_terms:
        twice, n_pos, n_neg = terms[:, 0], terms[:, 1], terms[:, 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            value = (twice / 2.0) / (n_pos * n_neg)
        per_class.append(np.where((n_pos > 0) & (n_neg > 0), value, np.nan))
    result: np.ndarray = np.mean(per_class, axis=0)
    return result


def weighted_samples(
    cand: Predictions,
    base: Predictions,
    labels: np.ndarray | None,
    rows: np.ndarray,
    key: str,
    names: Sequence[str],
    *,
    seed: int,
    resamples: int,
) -> dict[str, np.ndarray]:
    """Per-resample candidate − baseline of each of `names` this module computes, and
    `flip_rate` per resample (classification with labels; otherwise nothing)."""
    if (
        labels is None
        or cand.task != "classification"
        or cand.predicted is None
        or base.predicted is None
    ):
        return {}
    y = labels[rows]
    wanted = [n for n in names if n in WEIGHTED]
    models = (_Model(cand.take(rows), y, wanted), _Model(base.take(rows), y, wanted))
    cells = _Cells.build(models, (cand.predicted[rows] != base.predicted[rows]).astype(np.int64))
    groups = int(cells.code.max(initial=-1)) + 1
    count = len(rows)
    counts = np.empty((resamples, groups))
    auc: tuple[list[list[tuple[int, int, int]]], ...] = tuple([[] for _ in m.auc] for m in models)
    done = 0
    for block in draws(count, key, seed=seed, resamples=resamples):
        for picks in block:
            small = _narrow(np.bincount(picks, minlength=count))
            counts[done] = cells.count(small)
            done += 1
            if any(m.auc for m in models):
                for model, terms in zip(models, auc, strict=True):
                    for column, out in zip(model.auc, terms, strict=True):
                        out.append(column.terms(small))
    values = [
        m.finish(counts, cells, i, [np.array(t, dtype=np.float64).reshape(-1, 3) for t in a], count)
        for i, (m, a) in enumerate(zip(models, auc, strict=True))
    ]
    result = {n: values[0][n] - values[1][n] for n in models[0].names if n in models[1].names}
    result[FLIP] = (counts @ cells.flipped) / count
    return result
