"""Labelled evaluation data: CSV, Parquet or NPZ files (or frames/arrays) → model inputs,
labels and the columns slices are cut by."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
import pandas as pd

from shipyard.analysis.errors import AnalysisDataError
from shipyard.importers.samples import load_arrays
from shipyard.package.dtypes import numpy_dtype
from shipyard.package.hashing import sha256_file
from shipyard.package.tensorspec import TensorSpec

DEFAULT_LABELS = ("y", "label", "labels")
DataSource: TypeAlias = str | Path | pd.DataFrame | Mapping[str, np.ndarray]


@dataclass(frozen=True)
class EvalData:
    """Rows to evaluate: the model's inputs, the labels (if any) and every column (for slices).

    `sha256` identifies the data: the file's bytes, or pandas' row hashes of a frame given in
    memory, so a blessing records exactly what it was judged on.
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    columns: pd.DataFrame
    source: str
    sha256: str

    @property
    def rows(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


def read_eval_data(
    data: DataSource,
    specs: Sequence[TensorSpec],
    *,
    label: str | None = None,
    features: Sequence[str] | None = None,
) -> EvalData:
    """Read `data` for a model with inputs `specs`.

    A table gives one column per model input (named like the input: DataFrame-fitted
    scikit-learn packages take `[N, 1]` inputs, one per column), or, for a one-input model
    `[N, F]`, F feature columns: `features` if given, else every column but the label when
    exactly F remain (numeric ones only, when that makes F). An .npz holds one array per input
    (or one array for a one-input model). Labels come from `label` (default y, label, labels).
    """
    source, frame, arrays, digest = _load(data)
    if label is not None and label not in frame.columns and label not in arrays:
        raise AnalysisDataError(
            f"{source}: no label column {label!r}; it has {sorted(frame.columns) + sorted(arrays)}"
        )
    label_name = label or next((k for k in DEFAULT_LABELS if k in frame or k in arrays), None)
    if label_name is not None and label_name in {s.name for s in specs}:
        label_name = None if label is None else label_name
    labels = None
    if label_name is not None:
        labels = np.asarray(arrays.pop(label_name) if label_name in arrays else frame[label_name])
    inputs = _inputs(source, frame, arrays, specs, label_name, features)
    rows = {int(v.shape[0]) for v in inputs.values()}
    if len(rows) != 1 or 0 in rows:
        raise AnalysisDataError(f"{source}: inputs need the same, non-zero number of rows")
    count = rows.pop()
    if labels is not None and len(labels) != count:
        raise AnalysisDataError(f"{source}: {len(labels)} labels for {count} input rows")
    if frame.empty and len(frame.columns) == 0:
        frame = pd.DataFrame(index=range(count))
    return EvalData(inputs=inputs, labels=labels, columns=frame, source=source, sha256=digest)


def _load(data: DataSource) -> tuple[str, pd.DataFrame, dict[str, np.ndarray], str]:
    """(source, table columns, other arrays, sha256)."""
    if isinstance(data, pd.DataFrame):
        hashed = pd.util.hash_pandas_object(data, index=False).to_numpy()
        header = "\0".join(map(str, data.columns)).encode()
        return "frame", data.reset_index(drop=True), {}, _sha(header + hashed.tobytes())
    if isinstance(data, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in data.items()}
        return "arrays", *_split_npz(arrays), _sha_arrays(arrays)
    path = Path(data)
    if not path.is_file():
        raise AnalysisDataError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame = pd.read_csv(path)
    elif suffix in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except ImportError as exc:
            raise AnalysisDataError(f"{path}: reading Parquet needs pyarrow ({exc})") from exc
    elif suffix in (".npz", ".npy"):
        loaded = load_arrays(path, what="eval data", error=AnalysisDataError)
        arrays = {"": loaded} if isinstance(loaded, np.ndarray) else dict(loaded)
        return str(path), *_split_npz(arrays), sha256_file(path)
    else:
        raise AnalysisDataError(f"{path}: unknown data format; use .csv, .parquet or .npz")
    return str(path), frame, {}, sha256_file(path)


def _split_npz(arrays: dict[str, np.ndarray]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """1-D arrays double as columns for slicing; every array stays available as an input."""
    columns = {k: v for k, v in arrays.items() if k and v.ndim == 1}
    frame = pd.DataFrame(columns) if columns else pd.DataFrame()
    return frame, dict(arrays)


def _inputs(
    source: str,
    frame: pd.DataFrame,
    arrays: dict[str, np.ndarray],
    specs: Sequence[TensorSpec],
    label: str | None,
    features: Sequence[str] | None,
) -> dict[str, np.ndarray]:
    names = [s.name for s in specs]
    if all(n in arrays for n in names):
        return {s.name: _cast(arrays[s.name], s, source) for s in specs}
    if len(specs) == 1 and len(arrays) == 1 and not frame.columns.isin(names).any():
        return {names[0]: _cast(next(iter(arrays.values())), specs[0], source)}
    if not frame.empty and all(n in frame.columns for n in names) and features is None:
        return {s.name: _cast(_column(frame[s.name], s), s, source) for s in specs}
    if len(specs) == 1 and not frame.empty:
        return {
            names[0]: _cast(_matrix(source, frame, specs[0], label, features), specs[0], source)
        }
    have = sorted(map(str, frame.columns)) if not frame.empty else sorted(arrays)
    raise AnalysisDataError(f"{source}: the model takes inputs {names}; the data has {have}")


def _column(series: pd.Series, spec: TensorSpec) -> np.ndarray:
    values: np.ndarray = series.to_numpy()
    if spec.dtype == "str":
        values = values.astype(str).astype(object)
    return values.reshape(-1, 1) if len(spec.shape) == 2 else values


def _matrix(
    source: str,
    frame: pd.DataFrame,
    spec: TensorSpec,
    label: str | None,
    features: Sequence[str] | None,
) -> np.ndarray:
    width = spec.shape[1] if len(spec.shape) == 2 else -1
    if features is not None:
        missing = [f for f in features if f not in frame.columns]
        if missing:
            raise AnalysisDataError(f"{source}: feature column(s) {missing} not in the data")
        chosen = list(features)
    else:
        chosen = [c for c in frame.columns if c != label]
        if width != -1 and len(chosen) != width:
            chosen = [c for c in chosen if pd.api.types.is_numeric_dtype(frame[c])]
        if width == -1 or len(chosen) != width:
            raise AnalysisDataError(
                f"{source}: input {spec.name!r} takes {width if width != -1 else 'F'} features "
                f"per row; the data has {len(chosen)} candidate column(s) besides the label: "
                "name them with --feature (features=[...])"
            )
    matrix: np.ndarray = frame[chosen].to_numpy()
    return matrix


def _cast(array: np.ndarray, spec: TensorSpec, source: str) -> np.ndarray:
    array = np.asarray(array)
    if spec.dtype == "str":
        return array.astype(str).astype(object)
    target = numpy_dtype(spec.dtype)
    if array.dtype == target:
        return np.ascontiguousarray(array)
    if target.kind in "fiub" and array.dtype.kind in "fiub":
        if target.kind in "iu" and array.dtype.kind == "f" and not np.all(array == np.round(array)):
            raise AnalysisDataError(
                f"{source}: {spec.name!r} holds fractional values, the model expects {spec.dtype}"
            )
        return np.ascontiguousarray(array.astype(target))
    raise AnalysisDataError(
        f"{source}: {spec.name!r} has dtype {array.dtype}, the model expects {spec.dtype}"
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes() if value.dtype.kind != "O" else repr(value.tolist()).encode())
    return digest.hexdigest()
