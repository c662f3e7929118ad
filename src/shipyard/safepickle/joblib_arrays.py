"""joblib arrays: how many raw bytes NumpyUnpickler reads after a NumpyArrayWrapper BUILD."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shipyard.safepickle.numpy_objects import build_dtype
from shipyard.safepickle.stream import ParseError
from shipyard.safepickle.values import Global, NotStatic, Obj

if TYPE_CHECKING:
    from shipyard.safepickle.vm import Walker

_INT64 = 1 << 64


def _count(shape: object) -> int:
    """Element count as joblib computes it: an int64 product that silently wraps."""
    if not isinstance(shape, tuple | list):
        raise NotStatic("shape is not a tuple")
    count = 1
    for dim in shape:
        if type(dim) not in (int, bool) or not -(1 << 63) <= dim < (1 << 63):
            raise NotStatic("shape holds a value that is not an int64")
        count = (count * int(dim)) % _INT64
    return count - _INT64 if count >= 1 << 63 else count


def read_array(walker: Walker, wrapper: Obj) -> object:
    """Consume the array bytes after the wrapper's BUILD; return the stand-in for the array."""
    attrs = wrapper.attrs
    file = walker.file
    try:
        if "shape" not in attrs or "dtype" not in attrs:
            raise NotStatic("the wrapper has no shape or dtype attribute")
        count = _count(attrs["shape"])
        dtype_obj = attrs["dtype"]
        if not isinstance(dtype_obj, Obj):
            raise NotStatic("the wrapper's dtype is not a numpy.dtype")
        dtype = build_dtype(dtype_obj)
    except NotStatic as exc:
        message = f"joblib array wrapper cannot be sized statically: {exc}"
        raise ParseError(walker.pos, message) from exc
    if dtype.hasobject:
        return walker.nested_walk()  # an object array is a nested pickle read from the file
    if attrs.get("numpy_array_alignment_bytes") is not None:
        padding = file.data[file.pos] if file.remaining else 0  # read(1) is b"" at EOF
        file.pos += min(1, file.remaining)
        file.pos += min(padding, file.remaining)  # joblib ignores a short padding read
    if count < 0:
        raise ParseError(walker.pos, f"joblib array has a negative element count {count}")
    if dtype.itemsize == 0:
        raise ParseError(walker.pos, "joblib array has a zero item size (the loader fails)")
    file.skip(count * dtype.itemsize, "joblib array data")
    array = Global("numpy", "ndarray")
    return Obj(array, array)  # numpy-made: a later BUILD on it is refused
