"""Sample inputs: normalise what users pass, and synthesise inputs from a signature."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from shipyard.errors import UsageError
from shipyard.package.tensorspec import TensorSpec
from shipyard.runtime.synthesis import synthesize_feed

SampleLike: TypeAlias = np.ndarray | pd.DataFrame | Mapping[str, np.ndarray] | str | Path | None
Sample: TypeAlias = dict[str, np.ndarray] | np.ndarray | pd.DataFrame | None
"""A read sample; DataFrames pass through as they are (tabular importers type by column)."""


def read_sample(sample: SampleLike) -> Sample:
    """A sample given as a path (.npy, .npz) is read here, without pickle."""
    if sample is None or isinstance(sample, np.ndarray | pd.DataFrame):
        return sample
    if isinstance(sample, str | Path):
        return load_arrays(Path(sample), what="sample input")
    if isinstance(sample, tuple | list):
        # Positional order is ambiguous for exported graphs; names are not.
        raise UsageError(
            f"sample_input is a {type(sample).__name__} of {len(sample)} items; pass one array "
            "for a single-input model, or a dict keyed by input name, e.g. "
            "{'left': x1, 'right': x2}"
        )
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
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded:  # .npz members are read (and refused) only when accessed
            return {key: loaded[key] for key in loaded.files}
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise error(
                f"{path}: {what} holds Python objects (dtype=object), which Shipyard does not "
                "unpickle; save plain numeric or string arrays (np.str_)"
            ) from exc
        raise error(
            f"{path}: cannot read {what} as .npy/.npz without pickle ({exc}); save plain arrays"
        ) from exc


def synthesize(
    specs: Sequence[TensorSpec], *, batch: int = 4, seed: int = 0
) -> dict[str, np.ndarray]:
    """Deterministic inputs for a signature alone (dynamic dims become `batch` / 8); with the
    graph at hand, `shipyard.runtime.synthesis.candidates` knows more (vocabulary sizes …)."""
    return synthesize_feed(specs, {}, batch=batch, other=8, seed=seed)
