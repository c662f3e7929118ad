"""DataFrame-fitted scikit-learn models: one ONNX input per column, typed by the column.

Numeric columns become float32 `[-1, 1]` inputs (skl2onnx's default element type), integer
and bool columns int64, string / object / category columns ONNX strings. Without a sample
the columns come from `feature_names_in_`, strings wherever a fitted OneHotEncoder or
OrdinalEncoder with string categories reads the column, and rows are synthesized.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from shipyard.errors import UsageError

ColumnKind = Literal["float", "int", "str"]
SYNTHETIC_ROWS = 32


@dataclass(frozen=True)
class Columns:
    """The converter's view of a table: per-column kinds, the ONNX feed, the reference frame.

    `reference` is what the original estimator is called with: float columns hold exactly
    the float32 values the converted model sees, so both sides get the same numbers.
    """

    kinds: dict[str, ColumnKind]
    feed: dict[str, np.ndarray]
    reference: pd.DataFrame


def wants_columns(estimator: Any, sample: object) -> bool:
    """Whether the model takes one input per column rather than one matrix."""
    if isinstance(sample, pd.DataFrame):
        return True
    if isinstance(sample, Mapping):
        return len(sample) > 1 or set(sample) <= set(feature_names(estimator) or ())
    return feature_names(estimator) is not None


def feature_names(estimator: Any) -> list[str] | None:
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        return None
    return [str(n) for n in names]


def columns_for(estimator: Any, sample: object) -> Columns:
    """The typed columns, feed and reference frame for `sample` (synthesized when None)."""
    names = feature_names(estimator)
    if isinstance(sample, pd.DataFrame):
        frame = sample
    elif isinstance(sample, Mapping):
        frame = _frame_from_arrays(sample)
    elif sample is None:
        if names is None:
            raise UsageError(
                "cannot tell this estimator's input columns; pass sample_input (a few rows "
                "of the DataFrame it was fitted on)"
            )
        frame = synthesize_frame(estimator, names)
    else:
        matrix = np.asarray(sample)
        if names is None or matrix.ndim != 2 or matrix.shape[1] != len(names):
            raise UsageError(
                f"this estimator was fitted on {len(names or ())} named columns; pass "
                "sample_input as a DataFrame (or a .npz with one array per column)"
            )
        frame = pd.DataFrame(matrix, columns=names)
    if names is not None:
        missing = [n for n in names if n not in frame.columns]
        if missing:
            raise UsageError(
                f"sample input lacks column(s) {missing} the estimator was fitted on; pass "
                "rows of the same DataFrame"
            )
        frame = frame[names]
    if frame.empty:
        raise UsageError("sample input has no rows; pass a few rows of the training data")
    kinds = {str(c): column_kind(str(c), frame[c]) for c in frame.columns}
    feed: dict[str, np.ndarray] = {}
    reference = pd.DataFrame(index=frame.index)
    for column, kind in zip(frame.columns, kinds.values(), strict=True):
        values, ref = _column_values(str(column), frame[column], kind)
        feed[str(column)] = values.reshape(-1, 1)
        reference[column] = ref
    return Columns(kinds=kinds, feed=feed, reference=reference)


def column_kind(name: str, series: pd.Series[Any]) -> ColumnKind:
    """The ONNX input kind for one column, or a UsageError saying how to fix the column."""
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        categories = dtype.categories
        return (
            "str"
            if categories.dtype.kind in "OUS" or _is_text(categories)
            else ("float" if categories.dtype.kind == "f" else "int")
        )
    kind = getattr(dtype, "kind", "O")
    if kind == "f":
        return "float"
    if kind in "iub":
        return "int"
    if _is_text(series):
        return "str"
    raise UsageError(
        f"column {name!r} has dtype {dtype}, which an ONNX model cannot take; turn it into "
        "numbers or strings before the pipeline (and fit on those)"
    )


def _is_text(values: Any) -> bool:
    if pd.api.types.is_string_dtype(values.dtype) and values.dtype.kind != "O":
        return True
    if getattr(values.dtype, "kind", "") != "O":
        return False
    return all(isinstance(v, str) or v is None or v is pd.NA or v != v for v in values)


def _column_values(name: str, series: pd.Series[Any], kind: ColumnKind) -> tuple[np.ndarray, Any]:
    if kind == "float":
        values = series.to_numpy(dtype=np.float32, na_value=np.nan)
        original = series.dtype if getattr(series.dtype, "kind", "") == "f" else np.float64
        return values, pd.Series(values, index=series.index).astype(original)
    if kind == "int":
        if series.isna().any():
            raise UsageError(
                f"column {name!r} is an integer column with missing values; fill them "
                f"(df[{name!r}].fillna(0)) or make it a float column"
            )
        return series.to_numpy(dtype=np.int64), series
    if series.isna().any():
        raise UsageError(
            f"column {name!r} has missing values, which ONNX strings cannot hold; fill them "
            f"(df[{name!r}].fillna('missing')) before packing"
        )
    values = np.empty(len(series), dtype=object)
    values[:] = [str(v) for v in series.astype(object)]
    return values, series


def _frame_from_arrays(arrays: Mapping[str, Any]) -> pd.DataFrame:
    columns: dict[str, Any] = {}
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise UsageError(
                f"sample column {name!r} has shape {list(array.shape)}; give each column as "
                "[rows] or [rows, 1]"
            )
        columns[str(name)] = array.astype(object) if array.dtype.kind in "US" else array
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise UsageError(f"sample columns differ in length {sorted(lengths)}; give equal rows")
    return pd.DataFrame(columns)


def synthesize_frame(
    estimator: Any, names: list[str], *, rows: int = SYNTHETIC_ROWS
) -> pd.DataFrame:
    """Random rows: numbers ~ N(0, 1), encoded columns drawn from the encoder's categories."""
    rng = np.random.default_rng(0)
    categories = encoder_categories(estimator)
    data: dict[str, Any] = {}
    for name in names:
        known = categories.get(name)
        if known is not None and len(known):
            picks = np.asarray(known, dtype=object)[rng.integers(0, len(known), size=rows)]
            if all(isinstance(v, str) for v in known):
                data[name] = picks.astype(object)
            else:
                data[name] = picks.astype(np.float64)
        else:
            data[name] = rng.standard_normal(rows).astype(np.float32).astype(np.float64)
    return pd.DataFrame(data)


def encoder_categories(estimator: Any) -> dict[str, list[Any]]:
    """Column name -> categories of the fitted One-Hot/Ordinal encoder that reads it."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    found: dict[str, list[Any]] = {}
    for step in _walk(estimator):
        if not isinstance(step, ColumnTransformer):
            continue
        names = feature_names(step) or []
        for _, transformer, selection in getattr(step, "transformers_", []):
            encoder = _first_step(transformer)
            if not isinstance(encoder, OneHotEncoder | OrdinalEncoder):
                continue
            for column, cats in zip(_selected(selection, names), encoder.categories_, strict=False):
                found[column] = [c for c in cats.tolist() if c is not None and c == c]
    return found


def _walk(estimator: Any) -> Iterator[Any]:
    yield estimator
    for _, step, *_ in getattr(estimator, "steps", None) or []:
        yield from _walk(step)
    for _, step, *_ in getattr(estimator, "transformers_", None) or []:
        yield from _walk(step)


def _first_step(transformer: Any) -> Any:
    steps = getattr(transformer, "steps", None)
    return _first_step(steps[0][1]) if steps else transformer


def _selected(selection: Any, names: list[str]) -> list[str]:
    if isinstance(selection, str):
        return [selection]
    if isinstance(selection, slice):
        return names[selection]
    items = list(np.asarray(selection).ravel()) if not callable(selection) else []
    if items and isinstance(items[0], np.bool_ | bool):
        return [n for n, keep in zip(names, items, strict=False) if keep]
    return [names[int(i)] if not isinstance(i, str) else i for i in items]
