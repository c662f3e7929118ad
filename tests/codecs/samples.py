"""Sample tensors of every V2 datatype, including each type's extremes."""

from __future__ import annotations

import numpy as np

from shipyard.package.dtypes import BY_V2


def sample(datatype: str) -> np.ndarray:
    """A [2, 3] tensor including each type's extremes."""
    if datatype == "BYTES":
        return np.array([["a", "", "héllo"], ["\u2603", "x" * 50, "z"]], dtype=object)
    dtype = BY_V2[datatype].numpy
    if dtype.kind == "b":
        return np.array([[True, False, True], [False, False, True]])
    if dtype.kind == "f":
        info = np.finfo(dtype)
        return np.array([[0.5, -1.25, info.max], [info.min, info.tiny, 3.0]], dtype=dtype)
    info_i = np.iinfo(dtype)
    return np.array([[info_i.min, info_i.max, 0], [1, info_i.max - 1, 7]], dtype=dtype)
