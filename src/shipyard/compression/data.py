"""Eval and calibration data: .npz files or arrays keyed by input name, optional labels.

Raw texts and images for packages that declare processing become a Dataset too
(`shipyard.compression.raw`); texts of different lengths carry their token counts
(`TokenLengths`), so every batch is cut to the length the server would pad it to.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from shipyard.compression.errors import CompressionConfigError
from shipyard.importers.samples import load_arrays
from shipyard.package.dtypes import coerce, numpy_dtype
from shipyard.package.tensorspec import TensorSpec
from shipyard.processing.spec import TextProcessing
from shipyard.processing.text import padded_length

LABEL_KEYS = ("y", "label", "labels")

DataLike = str | Path | np.ndarray | Mapping[str, np.ndarray]
RawKind = Literal["text", "images"]


@dataclass(frozen=True)
class TokenLengths:
    """Token inputs of texts of different lengths, padded to the longest with the package's
    pad values: each row's real token count, so a batch of rows can be cut to what the
    server sends the graph for those texts as one request (`padded_length`)."""

    spec: TextProcessing
    counts: np.ndarray
    """Real (non-padding) tokens per row."""

    @property
    def inputs(self) -> frozenset[str]:
        names = (self.spec.input_ids, self.spec.attention_mask, self.spec.token_type_ids)
        return frozenset(n for n in names if n is not None)

    def cut(self, inputs: dict[str, np.ndarray], counts: np.ndarray) -> dict[str, np.ndarray]:
        """`inputs` (rows with these `counts`) with the token inputs cut to their length."""
        width = padded_length(int(counts.max()), spec=self.spec)
        return {
            k: np.ascontiguousarray(v[:, :width]) if k in self.inputs else v
            for k, v in inputs.items()
        }


@dataclass(frozen=True)
class Dataset:
    """Model inputs keyed by input name (rows along axis 0) and, optionally, labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    """Class indices, or class names (strings) for a package that declares them."""
    source: str = "given"
    raw: RawKind | None = None
    """Made from raw texts or images by the package's processing; None: tensors as given."""
    tokens: TokenLengths | None = None

    @property
    def rows(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def head(self, rows: int) -> Dataset:
        labels = None if self.labels is None else self.labels[:rows]
        tokens = (
            None if self.tokens is None else replace(self.tokens, counts=self.tokens.counts[:rows])
        )
        inputs = {k: v[:rows] for k, v in self.inputs.items()}
        return replace(self, inputs=inputs, labels=labels, tokens=tokens)

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.rows, size):
            yield self._cut(
                {k: v[start : start + size] for k, v in self.inputs.items()},
                slice(start, start + size),
            )

    def tiled(self, rows: int) -> dict[str, np.ndarray]:
        """Exactly `rows` rows, repeating the data when it has fewer."""
        return self.repeated(rows).inputs

    def repeated(self, rows: int) -> Dataset:
        """Exactly `rows` rows (no labels), repeating the data when it has fewer."""
        reps = -(-rows // self.rows)
        inputs = {
            k: np.ascontiguousarray(np.concatenate([v] * reps, axis=0)[:rows])
            for k, v in self.inputs.items()
        }
        tokens = self.tokens
        if tokens is not None:
            tokens = replace(tokens, counts=np.concatenate([tokens.counts] * reps)[:rows])
        data = replace(self, inputs=inputs, labels=None, tokens=tokens)
        return replace(data, inputs=data._cut(inputs, slice(0, rows)))

    def _cut(self, inputs: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
        return inputs if self.tokens is None else self.tokens.cut(inputs, self.tokens.counts[rows])


def load_dataset(data: DataLike, specs: Sequence[TensorSpec], *, what: str) -> Dataset:
    """Read `data` for a model with inputs `specs`; `what` names it in error messages.

    A single unnamed array (or one non-label key in an .npz) is taken as the only input of a
    one-input model; labels are read from a key named y, label or labels.
    """
    source = str(data) if isinstance(data, str | Path) else what
    arrays = _read(data, what)
    labels = None
    for key in LABEL_KEYS:
        if key in arrays and key not in {s.name for s in specs}:
            labels = np.asarray(arrays.pop(key))
            break
    names = [s.name for s in specs]
    if len(specs) == 1 and names[0] not in arrays:
        if len(arrays) != 1:
            raise CompressionConfigError(
                f"{source}: the model takes one input {names[0]!r}; the {what} data has "
                f"{sorted(arrays)} (name the array {names[0]!r} or keep one array besides y)"
            )
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise CompressionConfigError(
            f"{source}: {what} data lacks input(s) {missing}; it has {sorted(arrays)}"
        )
    inputs = {spec.name: _cast(arrays[spec.name], spec, source) for spec in specs}
    rows = {int(v.shape[0]) if v.ndim else 0 for v in inputs.values()}
    if len(rows) != 1 or 0 in rows:
        raise CompressionConfigError(
            f"{source}: {what} arrays need the same, non-zero number of rows along axis 0"
        )
    if labels is not None and labels.shape[0] != next(iter(rows)):
        raise CompressionConfigError(
            f"{source}: {labels.shape[0]} labels for {next(iter(rows))} input rows"
        )
    return Dataset(inputs=inputs, labels=labels, source=source)


def synthetic_dataset(specs: Sequence[TensorSpec], *, rows: int = 8, seed: int = 0) -> Dataset:
    """Deterministic inputs from the signature, used only when no data was given.

    Integer inputs named like a mask are ones, token types zeros, other integers small ids;
    floats are standard normal.
    """
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = tuple((rows if i == 0 else 16) if d == -1 else d for i, d in enumerate(spec.shape))
        dtype = numpy_dtype(spec.dtype)
        if spec.dtype == "bool":
            inputs[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif dtype.kind in "iu":
            name = spec.name.lower()
            value: np.ndarray
            if "mask" in name:
                value = np.ones(shape)
            elif "type" in name:  # token_type_ids: one segment
                value = np.zeros(shape)
            else:
                value = rng.integers(0, 100, size=shape)
            inputs[spec.name] = value.astype(dtype)
        elif dtype.kind == "f":
            inputs[spec.name] = rng.standard_normal(size=shape).astype(dtype)
        else:
            raise CompressionConfigError(
                f"input {spec.name!r} has dtype {spec.dtype}; give eval or calibration data"
            )
    return Dataset(inputs=inputs, source="synthetic")


def _read(data: DataLike, what: str) -> dict[str, np.ndarray]:
    if isinstance(data, np.ndarray):
        return {"": data}
    if isinstance(data, Mapping):
        return {str(k): np.asarray(v) for k, v in data.items()}
    loaded = load_arrays(Path(data), what=f"{what} data", error=CompressionConfigError)
    return {"": loaded} if isinstance(loaded, np.ndarray) else loaded


def _cast(array: np.ndarray, spec: TensorSpec, source: str) -> np.ndarray:
    """The runtime's own rule (`coerce`): data the served model would refuse is refused here."""
    what = f"{source}: array {spec.name!r}"
    return np.ascontiguousarray(
        coerce(np.asarray(array), spec.dtype, what=what, error=CompressionConfigError)
    )
