"""Sample inputs: normalise what users pass, and synthesise inputs from a signature."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import UsageError
from shipyard.package.tensorspec import TensorSpec

SampleLike = np.ndarray | Mapping[str, np.ndarray] | str | Path | None


def read_sample(sample: SampleLike) -> dict[str, np.ndarray] | np.ndarray | None:
    """A sample given as a path (.npy, .npz) is read here, without pickle."""
    if sample is None or isinstance(sample, np.ndarray):
        return sample
    if isinstance(sample, str | Path):
        return load_arrays(Path(sample), what="sample input")
    return {str(k): np.asarray(v) for k, v in sample.items()}


def load_arrays(
    path: Path, *, what: str, error: type[UsageError] = UsageError
) -> dict[str, np.ndarray] | np.ndarray:
    """The array of a .npy file or the arrays of a .npz, read without pickle.

    `what` names the data in the `error` raised when the file is missing or holds objects.
    """
    if not path.is_file():
        raise error(f"{path}: {what} file not found")
    try:
        loaded: Any = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise error(
            f"{path}: cannot read {what} as .npy/.npz without pickle ({exc}); save plain arrays"
        ) from exc
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        return {key: loaded[key] for key in loaded.files}


def synthesize(
    specs: Sequence[TensorSpec], *, batch: int = 4, seed: int = 0
) -> dict[str, np.ndarray]:
    """Deterministic random inputs for a signature (dynamic dims become `batch` / 8)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = tuple((batch if i == 0 else 8) if d == -1 else d for i, d in enumerate(spec.shape))
        if spec.dtype == "str":
            out[spec.name] = np.array(
                [f"s{i}" for i in range(int(np.prod(shape)))], dtype=object
            ).reshape(shape)
        elif spec.dtype == "bool":
            out[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif spec.dtype.startswith(("int", "uint")):
            out[spec.name] = rng.integers(0, 8, size=shape).astype(spec.dtype)
        else:
            out[spec.name] = rng.standard_normal(size=shape).astype(spec.dtype)
    return out
