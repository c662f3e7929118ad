"""How one batch's requests become one feed, and its outputs each request's answer.

Requests are joined along dim 0 (`feed`); token inputs of different lengths, submitted
with a `BatchPadding`, are padded to the longest first. Outputs are split back by rows
(`parts`), and outputs that carry the sequence axis are cut to each request's length.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from shipyard.serving.batch_queue import Pending


def joined_inputs(batch: list[Pending]) -> dict[str, np.ndarray]:
    """The batch's inputs as one feed (a single request's as they are)."""
    if len(batch) == 1:
        return batch[0].inputs
    pad = batch[0].pad
    if pad is not None and _mixed_lengths(batch):
        return pad.feed([i.inputs for i in batch])
    return {n: np.concatenate([i.inputs[n] for i in batch]) for n in batch[0].inputs}


def _mixed_lengths(batch: list[Pending]) -> bool:
    """Whether the batch joined token inputs of different lengths (so `joined_inputs` padded them)."""
    return batch[0].length is not None and len({i.length for i in batch}) > 1


def split_outputs(
    batch: list[Pending], results: dict[str, np.ndarray]
) -> list[dict[str, np.ndarray]] | None:
    """Each request's outputs, or None when they cannot be split by dim 0."""
    if len(batch) == 1:
        return [results]
    split = _split(results, [i.rows for i in batch])
    pad = batch[0].pad
    if split is None or pad is None or not _mixed_lengths(batch):
        return split
    return [pad.trim(part, item.length or 0) for part, item in zip(split, batch, strict=True)]


def wanted_outputs(requested: Iterable[list[str]]) -> list[str]:
    """Outputs to compute for a batch: all when any request wants all, else the union."""
    names: dict[str, None] = {}
    for outputs in requested:
        if not outputs:
            return []
        names.update(dict.fromkeys(outputs))
    return list(names)


def _split(results: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]] | None:
    """Slice every output back per request along dim 0, or None when shapes do not allow it."""
    total = sum(rows)
    if any(a.ndim == 0 or a.shape[0] != total for a in results.values()):
        return None
    offsets = np.cumsum([0, *rows]).tolist()
    return [
        {n: a[offsets[i] : offsets[i + 1]] for n, a in results.items()} for i in range(len(rows))
    ]
