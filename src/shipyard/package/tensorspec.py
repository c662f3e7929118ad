"""Tensor signatures: name, dtype and shape (-1 for a dynamic dimension), and dtype tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

# ONNX TensorProto element type -> numpy dtype name
ONNX_TO_NUMPY: dict[int, str] = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "str",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
}

NUMPY_TO_V2: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "str": "BYTES",
}
V2_TO_NUMPY: dict[str, str] = {v: k for k, v in NUMPY_TO_V2.items()}

DTYPES: frozenset[str] = frozenset(NUMPY_TO_V2)


def numpy_dtype(dtype: str) -> np.dtype[np.generic]:
    """The numpy dtype used to hold a tensor of this spec dtype (strings are objects)."""
    return np.dtype(object) if dtype == "str" else np.dtype(dtype)


def dtype_name(array: np.ndarray) -> str:
    """The spec dtype name for a numpy array (unicode, bytes and object arrays are 'str')."""
    if array.dtype.kind in "OUS":
        return "str"
    return str(array.dtype)


class TensorSpec(BaseModel):
    """One input or output of a model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    dtype: str
    shape: tuple[int, ...]

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in DTYPES:
            raise ValueError(f"unknown dtype {value!r}; expected one of {sorted(DTYPES)}")
        return value

    @field_validator("shape")
    @classmethod
    def _valid_dims(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < -1 for d in value):
            raise ValueError(f"shape {list(value)} has a dimension below -1")
        return value

    @property
    def v2_datatype(self) -> str:
        return NUMPY_TO_V2[self.dtype]

    @property
    def batched(self) -> bool:
        """True when the first dimension is dynamic, i.e. the model takes a batch."""
        return len(self.shape) > 0 and self.shape[0] == -1

    def shape_matches(self, shape: Sequence[int]) -> bool:
        if len(shape) != len(self.shape):
            return False
        return all(want in (-1, got) for want, got in zip(self.shape, shape, strict=True))

    def describe(self) -> str:
        dims = ", ".join("?" if d == -1 else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"
