"""Every tensor dtype Shipyard serves, one row each, and the one rule for casting inputs.

A row names a dtype in each format it crosses: the manifest (numpy names, "str" for
strings), ONNX (`TensorProto` element type), KServe V2 / Triton (datatype, model-config
`TYPE_*`), TensorFlow (`DT_*`) and V2 gRPC (the `InferTensorContents` field, if any). Every
codec, the OpenAPI document and the tests derive their mappings from `DTYPES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard.errors import InputError, ShipyardError


@dataclass(frozen=True)
class Dtype:
    """One dtype as each format spells it."""

    name: str
    """The manifest's name: the numpy dtype name, or "str" for strings."""
    v2: str
    """KServe V2 / Triton datatype."""
    onnx: int
    """ONNX `TensorProto.DataType` value."""
    tf: str
    """TensorFlow `DataType` enum name (TF Serving metadata)."""
    contents: str | None
    """V2 gRPC `InferTensorContents` field; None: only `raw_input_contents` carries it."""
    numpy: np.dtype[Any]
    """The numpy dtype holding a tensor in memory (strings are objects)."""
    wire: np.dtype[Any] | None
    """The binary tensor layout's element (little-endian; BOOL one byte); None for BYTES."""
    contents_numpy: np.dtype[Any] | None
    """The numpy dtype of the `contents` field's values (wider than `numpy` for small ints)."""

    @property
    def triton(self) -> str:
        """Triton model-config `DataType` name (BYTES is TYPE_STRING there)."""
        return "TYPE_STRING" if self.v2 == "BYTES" else f"TYPE_{self.v2}"


def _row(name: str, v2: str, onnx: int, tf: str, contents: str | None = None) -> Dtype:
    numpy = np.dtype(object) if name == "str" else np.dtype(name)
    wire = None if name == "str" else np.dtype("u1" if name == "bool" else numpy.newbyteorder("<"))
    contents_numpy = {
        None: None,
        "bool_contents": np.dtype(np.bool_),
        "int_contents": np.dtype(np.int32),
        "int64_contents": np.dtype(np.int64),
        "uint_contents": np.dtype(np.uint32),
        "uint64_contents": np.dtype(np.uint64),
        "fp32_contents": np.dtype(np.float32),
        "fp64_contents": np.dtype(np.float64),
        "bytes_contents": np.dtype(object),
    }[contents]
    return Dtype(name, v2, onnx, tf, contents, numpy, wire, contents_numpy)


DTYPES: tuple[Dtype, ...] = (
    _row("bool", "BOOL", 9, "DT_BOOL", "bool_contents"),
    _row("uint8", "UINT8", 2, "DT_UINT8", "uint_contents"),
    _row("uint16", "UINT16", 4, "DT_UINT16", "uint_contents"),
    _row("uint32", "UINT32", 12, "DT_UINT32", "uint_contents"),
    _row("uint64", "UINT64", 13, "DT_UINT64", "uint64_contents"),
    _row("int8", "INT8", 3, "DT_INT8", "int_contents"),
    _row("int16", "INT16", 5, "DT_INT16", "int_contents"),
    _row("int32", "INT32", 6, "DT_INT32", "int_contents"),
    _row("int64", "INT64", 7, "DT_INT64", "int64_contents"),
    _row("float16", "FP16", 10, "DT_HALF"),  # InferTensorContents has no fp16 field
    _row("float32", "FP32", 1, "DT_FLOAT", "fp32_contents"),
    _row("float64", "FP64", 11, "DT_DOUBLE", "fp64_contents"),
    _row("str", "BYTES", 8, "DT_STRING", "bytes_contents"),
)
"""Every ONNX tensor type ONNX Runtime takes as a model input (no bfloat16, complex, float8)."""

BY_NAME: Mapping[str, Dtype] = {d.name: d for d in DTYPES}
BY_V2: Mapping[str, Dtype] = {d.v2: d for d in DTYPES}
BY_ONNX: Mapping[int, Dtype] = {d.onnx: d for d in DTYPES}


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype holding a tensor of manifest dtype `name` (strings are objects)."""
    return BY_NAME[name].numpy


def dtype_name(array: np.ndarray) -> str:
    """The manifest dtype name of a numpy array (unicode, bytes and object arrays are "str")."""
    if array.dtype.kind in "OUS":
        return "str"
    return str(array.dtype)


def coerce(
    array: np.ndarray, dtype: str, *, what: str, error: type[ShipyardError] = InputError
) -> np.ndarray:
    """`array` as a tensor of manifest dtype `dtype`, or `error` saying why it cannot be.

    The one casting rule for model inputs (inference and compression data alike): a cast
    happens only where no value changes (int8 -> int32, small ints -> float32), never
    float64 -> float32; strings are str or UTF-8 bytes, held as str objects.
    """
    if dtype == "str":
        if array.dtype.kind not in "OUS":
            raise error(f"{what} must hold strings, got {array.dtype}")
        return _as_text(array, what=what, error=error)
    target = BY_NAME[dtype].numpy
    if array.dtype == target:
        return array
    if not _lossless(array, target):
        raise error(
            f"{what} has dtype {dtype_name(array)}, the model expects {dtype}; converting "
            f"would change values, so cast it yourself (e.g. x.astype('{dtype}'))"
        )
    return array.astype(target)


def _lossless(array: np.ndarray, target: np.dtype[Any]) -> bool:
    if np.can_cast(array.dtype, target, casting="safe"):
        return True
    if array.dtype.kind in "biu" and target.kind in "biuf":
        with np.errstate(all="ignore"):
            converted = array.astype(target)
            return bool(np.array_equal(converted.astype(array.dtype), array))
    return False


def _as_text(array: np.ndarray, *, what: str, error: type[ShipyardError]) -> np.ndarray:
    """ONNX strings are UTF-8 text: bytes elements are decoded, not stringified as "b'..'"."""
    flat = array.astype(object).ravel()
    try:
        flat[:] = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in flat]
    except UnicodeDecodeError as exc:
        raise error(f"{what}: an element is not valid UTF-8 ({exc})") from None
    return flat.reshape(array.shape)
