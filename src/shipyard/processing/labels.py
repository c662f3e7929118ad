"""Class names for a classifier's scores: `label` [N] and, with top_k > 1, the top k."""

from __future__ import annotations

import numpy as np

from shipyard.errors import ShipyardError
from shipyard.processing.spec import TOP_LABELS_OUTPUT, TOP_SCORES_OUTPUT, LabelProcessing


class LabelsMismatch(ShipyardError):
    """The scores output does not have one column per declared class."""


def label_outputs(scores: np.ndarray, *, spec: LabelProcessing) -> dict[str, np.ndarray]:
    """`label` (BYTES [N]) and, with top_k > 1, `top_labels`/`top_scores` ([N, k])."""
    if scores.ndim != 2 or scores.shape[1] != len(spec.classes):
        raise LabelsMismatch(
            f"output {spec.scores!r} has shape {list(scores.shape)}; its labels need "
            f"[N, {len(spec.classes)}]: repack with matching --labels"
        )
    names = np.asarray(spec.classes, dtype=object)
    best = np.argmax(scores, axis=1)
    outputs = {spec.label_output: names[best]}
    if spec.top_k > 1:
        k = min(spec.top_k, scores.shape[1])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        outputs[TOP_LABELS_OUTPUT] = names[order]
        outputs[TOP_SCORES_OUTPUT] = np.take_along_axis(scores, order, axis=1)
    return outputs


def output_names(spec: LabelProcessing) -> list[str]:
    names = [spec.label_output]
    if spec.top_k > 1:
        names += [TOP_LABELS_OUTPUT, TOP_SCORES_OUTPUT]
    return names
