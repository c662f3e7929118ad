"""Evaluation metrics, every one computed by scikit-learn: classification, regression, embeddings.

Scalar metrics come back as a flat `{name: value}` mapping (what thresholds, slices and the
bootstrap work on); curves and matrices come back separately for the report. A metric that is
undefined on the given rows (ROC-AUC with one class present) is NaN, never an exception.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import label_binarize

from shipyard.analysis.evaluate import Predictions

CALIBRATION_BINS = 10
NEIGHBOURS = 5
RESIDUAL_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)

HIGHER_IS_BETTER = {
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "roc_auc",
    "pr_auc",
    "r2",
    "cosine_mean",
    "cosine_min",
    "cosine_p05",
    "neighbour_agreement",
}
"""Everything else (log loss, ECE, MAE, RMSE, flip rate) is better lower."""


def higher_is_better(metric: str) -> bool:
    base = metric.split("[", 1)[0]
    return base in HIGHER_IS_BETTER or base in ("precision", "recall", "f1")


@dataclass(frozen=True)
class Calibration:
    """A reliability diagram from `calibration_curve`: per non-empty bin, the mean confidence,
    the observed accuracy and the row count."""

    confidence: list[float]
    accuracy: list[float]
    counts: list[int]
    ece: float


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float(skm.accuracy_score(labels, predicted))


def class_predictions(outputs: Sequence[np.ndarray]) -> np.ndarray | None:
    """Predicted classes from a model's outputs: a 1-D integer/string label output if there
    is one, else the argmax of the first 2-D float score output; None for other models."""
    for out in outputs:
        if out.ndim == 1 and out.dtype.kind in "iuUSO":
            return out
    for out in outputs:
        if out.dtype.kind == "f" and out.ndim == 2 and out.shape[1] > 1:
            result: np.ndarray = out.argmax(axis=1)
            return result
    return None


def classification_metrics(
    labels: np.ndarray,
    predicted: np.ndarray,
    scores: np.ndarray | None = None,
    classes: Sequence[Any] | None = None,
) -> dict[str, float]:
    """accuracy, precision/recall/F1 per class and macro; with `scores` ([N, C] probabilities
    in `classes` order) also ROC-AUC (ovr for multiclass), PR-AUC, log loss and ECE."""
    known = list(classes) if classes is not None else sorted(set(labels) | set(predicted))
    result = {"accuracy": accuracy(labels, predicted)}
    precision, recall, f1, _support = skm.precision_recall_fscore_support(
        labels, predicted, labels=known, zero_division=0
    )
    for index, cls in enumerate(known):
        result[f"precision[{cls}]"] = float(precision[index])
        result[f"recall[{cls}]"] = float(recall[index])
        result[f"f1[{cls}]"] = float(f1[index])
    # What precision_score/recall_score/f1_score(average="macro") each compute, in one pass.
    macro = skm.precision_recall_fscore_support(
        labels, predicted, labels=known, average="macro", zero_division=0
    )
    for name, value in zip(("precision_macro", "recall_macro", "f1_macro"), macro, strict=False):
        result[name] = float(value)
    if scores is not None:
        result.update(score_metrics(labels, scores, known))
    return result


def score_metrics(
    labels: np.ndarray, scores: np.ndarray, classes: Sequence[Any]
) -> dict[str, float]:
    """ROC-AUC, PR-AUC (average precision), log loss and ECE from class probabilities."""
    known = list(classes)
    return {
        "roc_auc": roc_auc(labels, scores, known),
        "pr_auc": pr_auc(labels, scores, known),
        "log_loss": _with_scores(lambda s: skm.log_loss(labels, s, labels=known), scores),
        "ece": calibration(labels, scores, known).ece,
    }


def roc_auc(labels: np.ndarray, scores: np.ndarray, classes: Sequence[Any]) -> float:
    known = list(classes)
    if len(known) == 2:
        return _undefined_is_nan(lambda: skm.roc_auc_score(labels == known[1], scores[:, 1]))
    return _with_scores(
        lambda s: skm.roc_auc_score(labels, s, multi_class="ovr", average="macro", labels=known),
        scores,
    )


def pr_auc(labels: np.ndarray, scores: np.ndarray, classes: Sequence[Any]) -> float:
    known = list(classes)
    if len(known) == 2:
        return _undefined_is_nan(
            lambda: skm.average_precision_score(labels == known[1], scores[:, 1])
        )
    onehot = label_binarize(labels, classes=known)
    return _undefined_is_nan(lambda: skm.average_precision_score(onehot, scores, average="macro"))


def calibration(
    labels: np.ndarray, scores: np.ndarray, classes: Sequence[Any], *, bins: int = CALIBRATION_BINS
) -> Calibration:
    """Top-label calibration: confidence = the highest probability, correct = its class is
    the label; bins and their means from `calibration_curve` (uniform bins), ECE = the
    row-weighted mean |accuracy - confidence| over the non-empty bins."""
    known = np.asarray(list(classes))
    confidence = np.clip(scores.max(axis=1).astype(np.float64), 0.0, 1.0)
    correct = (known[scores.argmax(axis=1)] == labels).astype(int)
    if len(np.unique(correct)) < 2:
        # calibration_curve needs both outcomes; one bin per the same uniform edges then.
        edges = np.linspace(0.0, 1.0, bins + 1)
        ids = np.searchsorted(edges[1:-1], confidence)
        counts = np.bincount(ids, minlength=bins)
        present = counts > 0
        mean_conf = np.bincount(ids, weights=confidence, minlength=bins)[present] / counts[present]
        observed = np.full(mean_conf.shape, float(correct[0]))
    else:
        observed, mean_conf = calibration_curve(correct, confidence, n_bins=bins)
        edges = np.linspace(0.0, 1.0, bins + 1)
        counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=bins)
    nonzero = counts[counts > 0]
    ece = float(np.sum(nonzero / nonzero.sum() * np.abs(observed - mean_conf)))
    return Calibration(
        confidence=[float(v) for v in mean_conf],
        accuracy=[float(v) for v in observed],
        counts=[int(v) for v in nonzero],
        ece=ece,
    )


def confusion(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[Any]) -> np.ndarray:
    matrix: np.ndarray = skm.confusion_matrix(labels, predicted, labels=list(classes))
    return matrix


def regression_metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R² and quantiles of the residual (prediction − label)."""
    y = labels.astype(np.float64).ravel()
    p = predicted.astype(np.float64).ravel()
    result = {
        "mae": float(skm.mean_absolute_error(y, p)),
        "rmse": float(skm.root_mean_squared_error(y, p)),
        "r2": _undefined_is_nan(lambda: skm.r2_score(y, p)) if len(y) > 1 else math.nan,
    }
    residual = p - y
    for q in RESIDUAL_QUANTILES:
        result[f"residual_p{round(q * 100):02d}"] = float(np.quantile(residual, q))
    return result


def paired_cosine(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine similarity of each candidate row with the same row of the reference."""
    a = candidate.reshape(len(candidate), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    similarity: np.ndarray = 1.0 - skm.pairwise.paired_cosine_distances(a, b)
    return similarity


def neighbour_sets(embeddings: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k nearest other rows by cosine distance ([N, k])."""
    flat = embeddings.reshape(len(embeddings), -1).astype(np.float64)
    index = NearestNeighbors(n_neighbors=k, metric="cosine").fit(flat)
    neighbours: np.ndarray = index.kneighbors(return_distance=False)  # excludes each row itself
    return neighbours


def neighbour_overlap(candidate: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Per row, the fraction of its k nearest neighbours that both embeddings agree on."""
    a, b = neighbour_sets(candidate, k), neighbour_sets(reference, k)
    return np.array([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)])


def embedding_metrics(
    candidate: np.ndarray, reference: np.ndarray, *, k: int = NEIGHBOURS
) -> dict[str, float]:
    """Cosine to the reference model's outputs (mean, min, 5th percentile) and k-nearest-
    neighbour agreement between the two embedding spaces (k shrinks for tiny sets)."""
    cos = paired_cosine(candidate, reference)
    result = {
        "cosine_mean": float(np.mean(cos)),
        "cosine_min": float(np.min(cos)),
        "cosine_p05": float(np.quantile(cos, 0.05)),
    }
    k = min(k, len(candidate) - 1)
    if k >= 1:
        result["neighbour_agreement"] = float(np.mean(neighbour_overlap(candidate, reference, k)))
    return result


def _with_scores(compute: Any, scores: np.ndarray) -> float:
    """`compute(scores)`; when scikit-learn refuses rows that do not sum to one (a model's
    scores rather than probabilities), once more on the rows renormalised."""
    value = _undefined_is_nan(lambda: compute(scores))
    if not math.isnan(value):
        return value
    s = scores.astype(np.float64)
    total = s.sum(axis=1, keepdims=True)
    return _undefined_is_nan(lambda: compute(s / np.where(total > 0, total, 1.0)))


def _undefined_is_nan(compute: Any) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(compute())
        except ValueError:
            return math.nan


def metrics_for(
    predictions: Predictions,
    labels: np.ndarray | None,
    reference: Predictions | None = None,
) -> dict[str, float]:
    """Every scalar metric of one model's predictions on these rows (embeddings: vs the
    reference model's, so only with a baseline)."""
    if predictions.task == "embedding":
        if reference is None or predictions.embedding is None or reference.embedding is None:
            return {}
        return embedding_metrics(predictions.embedding, reference.embedding)
    if labels is None or predictions.predicted is None:
        return {}
    if predictions.task == "regression":
        return regression_metrics(labels, predictions.predicted)
    return classification_metrics(
        labels, predictions.predicted, predictions.scores, predictions.classes
    )


def single_metric(name: str, predictions: Predictions, labels: np.ndarray | None) -> float:
    """One metric by name, computing only what it needs (the bootstrap calls this per
    resample); metrics without a shortcut come from `metrics_for`."""
    p, s, known = predictions.predicted, predictions.scores, predictions.classes
    if labels is not None and p is not None and predictions.task == "classification":
        averaged = {"precision_macro": skm.precision_score, "recall_macro": skm.recall_score}
        averaged["f1_macro"] = skm.f1_score
        if name in averaged:
            return float(averaged[name](labels, p, labels=known, average="macro", zero_division=0))
        if name == "accuracy":
            return accuracy(labels, p)
        if s is not None and name == "roc_auc":
            return roc_auc(labels, s, known)
        if s is not None and name == "pr_auc":
            return pr_auc(labels, s, known)
        if s is not None and name == "log_loss":
            return _with_scores(lambda v: skm.log_loss(labels, v, labels=known), s)
    if labels is not None and p is not None and predictions.task == "regression" and name == "r2":
        return _undefined_is_nan(lambda: skm.r2_score(labels, p))
    return metrics_for(predictions, labels).get(name, math.nan)
