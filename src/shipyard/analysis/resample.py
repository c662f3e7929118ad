"""Metrics for many bootstrap resamples at once, from a [resamples, rows] index matrix.

Each function gives, per resample, exactly what scikit-learn gives on the resampled rows
(the tests check this against sklearn.metrics resample by resample): means of per-row
quantities (accuracy, MAE, RMSE), macro precision/recall/F1 from per-resample confusion
counts (zero_division=0), and ROC-AUC as the Mann–Whitney statistic with ties counted half
(binary; one-vs-rest macro for multiclass). Resamples are processed in blocks so memory
stays near BLOCK_CELLS floats whatever the data size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from shipyard.analysis.evaluate import Predictions

BLOCK_CELLS = 4_000_000
VECTORISED = frozenset(
    {"accuracy", "mae", "rmse", "precision_macro", "recall_macro", "f1_macro", "roc_auc"}
)


def per_resample(
    name: str, pred: Predictions, labels: np.ndarray, index: np.ndarray
) -> np.ndarray | None:
    """`name` on each resample (rows of `index`), or None when it has no vectorised form."""
    if name not in VECTORISED or pred.predicted is None:
        return None
    if name in ("mae", "rmse"):
        if pred.task != "regression":
            return None
        err = pred.predicted - labels.astype(np.float64)
        if name == "mae":
            return _blocks(index, lambda i: np.abs(err)[i].mean(axis=1))
        return _blocks(index, lambda i: np.sqrt((err**2)[i].mean(axis=1)))
    if pred.task != "classification":
        return None
    if name == "accuracy":
        correct = (pred.predicted == labels).astype(np.float64)
        return _blocks(index, lambda i: correct[i].mean(axis=1))
    if name == "roc_auc":
        if pred.scores is None:
            return None
        return _roc_auc(pred.scores, labels, pred.classes, index)
    return _macro(name, pred.predicted, labels, pred.classes, index)


def _blocks(index: np.ndarray, compute: Any) -> np.ndarray:
    step = max(1, BLOCK_CELLS // max(1, index.shape[1]))
    return np.concatenate([compute(index[s : s + step]) for s in range(0, len(index), step)])


def _weights(index: np.ndarray, rows: int) -> np.ndarray:
    """[resamples, rows]: how often each row was drawn in each resample."""
    offsets = (np.arange(len(index))[:, None] * rows + index).ravel()
    return np.bincount(offsets, minlength=len(index) * rows).reshape(len(index), rows)


def class_codes(values: np.ndarray, classes: Sequence[Any]) -> np.ndarray:
    """Class index of each value; values outside `classes` get len(classes) (ignored).
    Looked up once per distinct value (pandas' hash factorisation), not once per row."""
    lookup = {c: i for i, c in enumerate(classes)}
    try:
        codes, uniques = pd.factorize(np.asarray(values), use_na_sentinel=False)
    except TypeError:
        return np.array([lookup.get(v, len(classes)) for v in values.tolist()], dtype=np.int64)
    mapped = np.array(
        [lookup.get(v, len(classes)) for v in np.asarray(uniques).tolist()], dtype=np.int64
    )
    result: np.ndarray = mapped[codes]
    return result


def _macro(
    name: str, predicted: np.ndarray, labels: np.ndarray, classes: Sequence[Any], index: np.ndarray
) -> np.ndarray:
    k = len(classes)
    size = k + 1  # one extra code for values outside `classes`
    pair = class_codes(labels, classes) * size + class_codes(predicted, classes)

    def block(i: np.ndarray) -> np.ndarray:
        counts = _weights(np.asarray(pair)[i], size * size).reshape(len(i), size, size)
        return macro_from_counts(name, counts, k)

    return _blocks(index, block)


def macro_from_counts(name: str, counts: np.ndarray, k: int) -> np.ndarray:
    """Macro precision/recall/F1 per resample from [resamples, k+1, k+1] confusion counts
    (label code × predicted code; code k = outside the classes), zero_division=0."""
    tp = counts[:, np.arange(k), np.arange(k)].astype(np.float64)
    pred_sum = counts[:, :, :k].sum(axis=1).astype(np.float64)
    true_sum = counts[:, :k, :].sum(axis=2).astype(np.float64)
    if name == "precision_macro":
        value = _ratio(tp, pred_sum)
    elif name == "recall_macro":
        value = _ratio(tp, true_sum)
    else:
        value = _ratio(2 * tp, pred_sum + true_sum)
    result: np.ndarray = value.mean(axis=1)
    return result


def _roc_auc(
    scores: np.ndarray, labels: np.ndarray, classes: Sequence[Any], index: np.ndarray
) -> np.ndarray:
    columns = [1] if len(classes) == 2 else list(range(len(classes)))
    per_class = [
        _blocks(index, lambda i, c=c: _auc(scores[:, c], labels == classes[c], i)) for c in columns
    ]
    result: np.ndarray = np.mean(per_class, axis=0)
    return result


def _auc(score: np.ndarray, positive: np.ndarray, index: np.ndarray) -> np.ndarray:
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    weights = _weights(index, len(score))[:, order].astype(np.float64)
    pos = np.add.reduceat(weights * positive[order], starts, axis=1)
    neg = np.add.reduceat(weights * ~positive[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower, per tie group
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        result: np.ndarray = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), result, np.nan)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        result: np.ndarray = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return result
