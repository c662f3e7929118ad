"""Fidelity and accuracy as a client of the served version sees them.

Both models' outputs go through the package's own post-processing
(`Processor.postprocess`, what the server runs on every reply): labels are compared as the
class names a client receives, and an embedding as the output the client reads.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shipyard.compression.report import ServedFidelity
from shipyard.processing.runtime import Processor
from shipyard.processing.spec import Processing


def served_fidelity(
    base: Mapping[str, np.ndarray],
    cand: Mapping[str, np.ndarray],
    *,
    processing: Processing,
    source: str,
) -> ServedFidelity:
    """Label agreement and embedding cosine of two models' named outputs for the same rows
    (each None where the processing adds no labels / names no embedding output)."""
    from shipyard.compression.measure import cosine_rows

    processor = Processor(processing)  # post-processing needs no tokenizer
    embedding = processor.embedding_output
    labels = processing.labels
    scored = labels is not None and labels.scores in base and labels.scores in cand
    embedded = embedding is not None and embedding in base and embedding in cand
    rows = int(next(iter(base.values())).shape[0])
    figures: dict[str, object] = {"source": source, "rows": rows}
    if embedded:
        assert embedding is not None
        cosines = cosine_rows(
            np.asarray(base[embedding]).reshape(rows, -1),
            np.asarray(cand[embedding]).reshape(rows, -1),
        )
        figures |= {
            "embedding_output": embedding,
            "mean_cosine": round(float(np.mean(cosines)), 6),
            "min_cosine": round(float(np.min(cosines)), 6),
        }
    if scored:
        assert labels is not None
        ours = served_labels(base, processing)
        theirs = served_labels(cand, processing)
        assert ours is not None and theirs is not None
        figures |= {
            "label_output": labels.label_output,
            "label_agreement": round(float(np.mean(ours == theirs)), 6),
        }
    return ServedFidelity.model_validate(figures)


def served_labels(
    outputs: Mapping[str, np.ndarray], processing: Processing | None
) -> np.ndarray | None:
    """The class names the server answers for these outputs (its `label` output); None when
    the package adds no labels."""
    if processing is None or processing.labels is None:
        return None
    labels = processing.labels
    if labels.scores not in outputs:
        return None
    replied = Processor(processing).postprocess(dict(outputs), [labels.label_output])
    return np.asarray(replied[labels.label_output], dtype=str)
