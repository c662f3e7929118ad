"""Do two versions answer one request alike? Row by row, on the outputs that decide it.

A rollout compares the candidate's outputs with the stable version's for the same request
(shadow: the candidate's mirrored copy; canary: stable's mirrored copy). A row agrees when
every judged output agrees on it: integer, bool and string outputs (labels) must be equal,
float outputs within `atol + rtol * |stable|`. By default the judged outputs are the
label-like ones when the model has any (a retrained classifier's probabilities always move a
little; its labels should not), else every output. The largest absolute difference over
float outputs is reported either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Comparison:
    """One request compared: rows judged, rows that agree, the largest float difference."""

    rows: int
    agreed: int
    max_abs_diff: float
    problem: str | None = None
    """Why the outputs could not be compared (then no row agrees)."""


def judged_outputs(outputs: Mapping[str, np.ndarray], wanted: Sequence[str] | None) -> list[str]:
    """The outputs agreement is judged on: `wanted` if given, else label-like ones, else all."""
    if wanted:
        return [n for n in wanted if n in outputs]
    labels = [n for n, a in outputs.items() if not np.issubdtype(a.dtype, np.floating)]
    return labels or list(outputs)


def compare(
    stable: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    *,
    wanted: Sequence[str] | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> Comparison:
    """Compare the candidate's outputs with stable's for one request."""
    names = judged_outputs(stable, wanted)
    rows = _rows(stable, names)
    missing = [n for n in names if n not in candidate]
    if missing:
        return Comparison(rows, 0, float("inf"), f"candidate lacks output(s) {missing}")
    agree = np.ones(rows, dtype=bool)
    for name in names:
        s, c = np.asarray(stable[name]), np.asarray(candidate[name])
        if s.shape != c.shape:
            return Comparison(rows, 0, float("inf"), f"{name}: shape {c.shape} != {s.shape}")
        agree &= _row_agreement(s, c, rtol=rtol, atol=atol)
    return Comparison(rows, int(agree.sum()), _max_abs_diff(stable, candidate))


def _rows(outputs: Mapping[str, np.ndarray], names: Sequence[str]) -> int:
    for name in names:
        array = np.asarray(outputs[name])
        return int(array.shape[0]) if array.ndim else 1
    return 0


def _row_agreement(s: np.ndarray, c: np.ndarray, *, rtol: float, atol: float) -> np.ndarray:
    if s.ndim == 0:
        s, c = s.reshape(1), c.reshape(1)
    if np.issubdtype(s.dtype, np.floating) and np.issubdtype(c.dtype, np.floating):
        close = np.isclose(c, s, rtol=rtol, atol=atol, equal_nan=True)
    else:
        close = np.asarray(s == c)
    rows: np.ndarray = close.reshape(close.shape[0], -1).all(axis=1)
    return rows


def _max_abs_diff(stable: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> float:
    worst = 0.0
    for name, s in stable.items():
        c = candidate.get(name)
        if c is None or s.shape != c.shape or s.size == 0:
            continue
        if np.issubdtype(s.dtype, np.floating) and np.issubdtype(c.dtype, np.floating):
            diff = np.abs(s.astype(np.float64) - c.astype(np.float64))
            worst = max(worst, float(np.nanmax(diff)))
    return worst
