"""Slices: rows grouped by the value of a column, by crossed columns ("plan×region"), with
numeric columns cut into quantile bins; slices under a minimum size are reported, not scored."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from shipyard.analysis.errors import AnalysisConfigError

CROSS = "×"
MIN_SLICE_SIZE = 30
QUANTILE_BINS = 4
MAX_CATEGORIES = 20
"""A numeric column with more distinct values than this is cut into quantile bins."""


@dataclass(frozen=True)
class Slice:
    """One slice: its key (`plan=pro` or `plan=pro×region=eu`) and the rows in it."""

    key: str
    spec: str
    rows: np.ndarray

    @property
    def size(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class Slicing:
    slices: list[Slice]
    skipped: dict[str, int]
    """Slices with fewer rows than the minimum: key → row count."""


def parse_spec(spec: str) -> tuple[str, ...]:
    """`plan`, `plan×region`, `plan*region` or `plan,region` → the column names."""
    parts = tuple(p.strip() for p in re.split(r"[×*,]", spec))
    if not all(parts):
        raise AnalysisConfigError(f"slice {spec!r}: expected COLUMN or COLUMN×COLUMN")
    return parts


def slice_rows(
    frame: pd.DataFrame,
    specs: Sequence[str],
    *,
    min_size: int = MIN_SLICE_SIZE,
    bins: int = QUANTILE_BINS,
) -> Slicing:
    """Every slice of every spec, in spec order then by key; small ones go to `skipped`."""
    slices: list[Slice] = []
    skipped: dict[str, int] = {}
    for spec in specs:
        columns = parse_spec(spec)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            have = ", ".join(map(str, frame.columns)) or "none"
            raise AnalysisConfigError(
                f"slice {spec!r}: column(s) {missing} not in the data (columns: {have})"
            )
        labels = pd.DataFrame({c: _labels(frame[c], bins) for c in columns})
        groups = labels.groupby(list(columns), sort=True, dropna=False, observed=True).indices
        name = CROSS.join(columns)
        for values, rows in groups.items():
            parts = values if isinstance(values, tuple) else (values,)
            key = CROSS.join(f"{c}={v}" for c, v in zip(columns, parts, strict=True))
            if len(rows) < min_size:
                skipped[key] = len(rows)
            else:
                slices.append(Slice(key=key, spec=name, rows=np.sort(np.asarray(rows))))
    return Slicing(slices=slices, skipped=skipped)


def _labels(column: pd.Series, bins: int) -> pd.Series:
    """Values as slice labels: categories as they are, many-valued numbers as quantile bins
    `[min, q1]`, `(q1, q2]` … (pandas' qcut, duplicate edges dropped); missing values as `NA`."""
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if numeric and column.nunique(dropna=True) > MAX_CATEGORIES:
        cut = pd.qcut(column, q=bins, duplicates="drop")
        edges = [float(column.min())] + [float(i.right) for i in cut.cat.categories]
        text = [
            f"{'[' if i == 0 else '('}{_num(a)}, {_num(b)}]"
            for i, (a, b) in enumerate(itertools.pairwise(edges))
        ]
        named = cut.cat.rename_categories(text)
        return named.cat.add_categories(["NA"]).fillna("NA") if named.isna().any() else named
    return column.astype(object).where(column.notna(), "NA").map(str)


def _num(value: float) -> str:
    return f"{value:.4g}"
