"""Run a package on evaluation rows with ONNX Runtime (shipyard.load(...).infer, in batches)
and read its outputs as class labels and probabilities, regression values or embeddings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from shipyard.analysis.errors import AnalysisConfigError
from shipyard.model import Model

Task = Literal["classification", "regression", "embedding"]
TaskChoice = Literal["auto", "classification", "regression", "embedding"]
DEFAULT_BATCH = 256


@dataclass(frozen=True)
class Predictions:
    """One model's answers for every row, in the shape the metrics need.

    classification: `predicted` labels and, when the model gives them, `scores` ([N, C]
    probabilities in `classes` order); regression: `predicted` values; embedding:
    `embedding` ([N, D], any per-row output flattened).
    """

    task: Task
    predicted: np.ndarray | None = None
    scores: np.ndarray | None = None
    classes: list[Any] = field(default_factory=list)
    embedding: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> Predictions:
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows]

        return Predictions(
            task=self.task,
            predicted=pick(self.predicted),
            scores=pick(self.scores),
            classes=self.classes,
            embedding=pick(self.embedding),
        )


def run_batches(
    model: Model, inputs: Mapping[str, np.ndarray], *, batch_size: int = DEFAULT_BATCH
) -> dict[str, np.ndarray]:
    """Every output for every row; a fixed batch dimension is honoured by padding the last
    batch with repeats of its own rows (their outputs are dropped)."""
    rows = int(next(iter(inputs.values())).shape[0])
    fixed = {s.shape[0] for s in model.inputs if s.shape and s.shape[0] != -1}
    size = fixed.pop() if len(fixed) == 1 else batch_size
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, rows, size):
        feed = {k: v[start : start + size] for k, v in inputs.items()}
        got = len(next(iter(feed.values())))
        if fixed and got < size:
            feed = {k: np.resize(v, (size, *v.shape[1:])) for k, v in feed.items()}
        for name, value in model.infer(feed).items():
            parts.setdefault(name, []).append(np.asarray(value)[:got])
    return {name: np.concatenate(chunks, axis=0) for name, chunks in parts.items()}


def detect_task(model: Model, labels: np.ndarray | None, choice: TaskChoice = "auto") -> Task:
    """The task from `choice`, else the importer's metadata, else the outputs and labels:
    no labels → embedding; a label output or float labels → classification / regression."""
    if choice != "auto":
        return choice
    meta = model.manifest.metadata.get("task")
    if labels is None:
        return "embedding"
    if meta in ("classification", "regression"):
        return "classification" if meta == "classification" else "regression"
    if "classes" in model.manifest.metadata:
        return "classification"
    if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
        return "regression"
    has_scores = any(
        s.dtype.startswith("float") and len(s.shape) == 2 and s.shape[1] != 1 for s in model.outputs
    )
    has_labels = any(len(s.shape) == 1 and not s.dtype.startswith("float") for s in model.outputs)
    return "classification" if has_scores or has_labels else "regression"


def read_predictions(
    model: Model, outputs: Mapping[str, np.ndarray], task: Task, labels: np.ndarray | None
) -> Predictions:
    """Interpret raw outputs for `task` (see Predictions)."""
    if task == "embedding":
        name = _float_output(model, outputs, prefer=("sentence_embedding", "embedding"))
        value = outputs[name]
        return Predictions(task=task, embedding=value.reshape(len(value), -1))
    if task == "regression":
        name = _float_output(model, outputs, prefer=("variable", "predictions", "output"))
        value = outputs[name]
        if value.ndim > 1 and value.reshape(len(value), -1).shape[1] != 1:
            raise AnalysisConfigError(
                f"{model.name}: regression needs one value per row; output {name!r} has shape "
                f"{list(value.shape)}"
            )
        return Predictions(task=task, predicted=value.reshape(-1).astype(np.float64))
    return _classification(model, outputs, labels)


def _classification(
    model: Model, outputs: Mapping[str, np.ndarray], labels: np.ndarray | None
) -> Predictions:
    label_out = next(
        (v for v in outputs.values() if v.ndim == 1 and v.dtype.kind in "iuUSOb"), None
    )
    scores = outputs.get("probabilities")
    if scores is None:
        scores = next(
            (v for v in outputs.values() if v.dtype.kind == "f" and v.ndim == 2 and v.shape[1] > 1),
            None,
        )
    meta_classes = model.manifest.metadata.get("classes")
    if isinstance(meta_classes, list) and meta_classes:
        classes = list(meta_classes)
    elif scores is not None:
        classes = list(range(scores.shape[1]))
    elif label_out is not None:
        seen = set(label_out.tolist()) | (set(labels.tolist()) if labels is not None else set())
        classes = sorted(seen)
    else:
        raise AnalysisConfigError(
            f"{model.name}: no class label or score output to evaluate as a classifier; "
            f"outputs {sorted(outputs)} (pass --task regression or embedding)"
        )
    if scores is not None and scores.shape[1] != len(classes):
        scores = None  # not probabilities over these classes (e.g. one decision value)
    predicted = label_out if label_out is not None else np.asarray(classes)[scores.argmax(axis=1)]  # type: ignore[union-attr]
    if labels is not None:
        predicted = _like(predicted, labels)
        classes = list(_like(np.asarray(classes), labels))
    return Predictions(task="classification", predicted=predicted, scores=scores, classes=classes)


def _like(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Predicted labels in the labels' type (a CSV's int column vs string class names)."""
    if labels.dtype.kind in "OUS" and values.dtype.kind not in "OUS":
        return values.astype(str).astype(object)
    if labels.dtype.kind in "iu" and values.dtype.kind in "OUS":
        try:
            return values.astype(np.int64)
        except ValueError:
            return values
    return values


def _float_output(model: Model, outputs: Mapping[str, np.ndarray], prefer: tuple[str, ...]) -> str:
    for name in prefer:
        if name in outputs and outputs[name].dtype.kind == "f":
            return name
    for name, value in outputs.items():
        if value.dtype.kind == "f" and value.ndim >= 1:
            return name
    raise AnalysisConfigError(f"{model.name}: no float output; outputs {sorted(outputs)}")
