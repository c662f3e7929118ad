"""One tensor between V2 JSON data (nested or flat lists) and numpy, strictly checked.

JSON data is turned into numpy in one `np.array` call and then checked: the element kind
must fit the datatype (no silent float -> int truncation, no strings as numbers), integers
must fit their width, and the element count must equal prod(shape). BYTES elements become
a numpy object array of `str` (JSON) or `bytes` (binary).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from shipyard.codecs.errors import ProtocolError
from shipyard.codecs.limits import MAX_RANK, DecodeLimits, check_bytes_element, declared_extent
from shipyard.package.dtypes import BY_NAME, BY_V2

DATATYPES: frozenset[str] = frozenset(BY_V2)
"""V2 datatypes Shipyard serves: every one ONNX has (BF16 is not an ONNX Runtime input here)."""

# Which numpy kinds JSON values may arrive as for each target kind.
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def check_datatype(datatype: object, *, what: str) -> str:
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise ProtocolError(
            f"{what}: datatype {datatype!r} is not supported; use one of {sorted(DATATYPES)}"
        )
    return datatype


def check_shape(shape: object, *, what: str) -> tuple[int, ...]:
    # Each step runs in C over the list (this runs for each tensor of each request): the
    # types of the dims, their minimum, then the product of the dims above 1 (a zero dim
    # does not make a huge shape acceptable), computed only once the rank is bounded.
    if type(shape) is not list:
        raise _bad_shape(shape, what)
    if shape and (set(map(type, shape)) != _INT or min(shape) < 0):
        raise _bad_shape(shape, what)  # bool, float, str, ... or a negative dim
    if len(shape) > MAX_RANK:
        raise ProtocolError(f"{what}: shape has {len(shape)} dimensions; at most {MAX_RANK}")
    if declared_extent(shape) >= _TOO_LARGE:
        raise ProtocolError(f"{what}: shape {shape!r} is too large for any tensor")
    return tuple(shape)


_INT = {int}


_TOO_LARGE = 1 << 62
"""Elements no tensor can have (numpy's sizes are signed 64-bit)."""


def _bad_shape(shape: object, what: str) -> ProtocolError:
    return ProtocolError(f"{what}: shape must be a list of non-negative integers, got {shape!r}")


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype holding a V2 datatype in memory (BYTES -> object)."""
    return BY_V2[datatype].numpy


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype of a numpy array (str, bytes and object arrays are BYTES)."""
    dtype = array.dtype
    known = _V2_OF_DTYPE.get(dtype)
    if known is not None:
        return known
    if dtype.kind in "OUS":
        return "BYTES"
    try:
        v2 = BY_NAME[dtype.name].v2  # numpy computes `name` in Python: slow per request
    except KeyError:
        raise ProtocolError(f"numpy dtype {dtype} has no V2 datatype") from None
    if len(_V2_OF_DTYPE) < 64:
        _V2_OF_DTYPE[dtype] = v2
    return v2


_V2_OF_DTYPE: dict[np.dtype[Any], str] = {}
"""`datatype_of`'s answers by dtype (numeric dtypes; equal dtypes share their name)."""


def array_from_json(
    data: Any,
    *,
    datatype: str,
    shape: tuple[int, ...],
    what: str,
    limits: DecodeLimits | None = None,
) -> np.ndarray:
    """Build the tensor `what` from JSON `data`; every mismatch is a ProtocolError (400).

    With `limits`, a BYTES element over `max_bytes_element` is RequestTooLarge (413).
    """
    count = math.prod(shape)
    if datatype == "BYTES":
        flat: list[Any] = []
        _flatten_strings(data, flat, what=what)
        if limits is not None:
            for item in flat:
                # UTF-8 takes 1-4 bytes a character: encode only the strings that may be over
                if len(item) * 4 > limits.max_bytes_element:
                    check_bytes_element(
                        len(item.encode("utf-8", "surrogatepass")), limits, what=what
                    )
        _check_count(len(flat), count, shape, what=what)
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    try:
        raw = np.array(data)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(
            f"{what}: data is not a regular (non-ragged) array of numbers ({exc})"
        ) from None
    _check_count(raw.size, count, shape, what=what)
    target = numpy_dtype(datatype)
    if raw.size == 0:
        return np.zeros(shape, dtype=target)
    if target.kind in "iu" and raw.dtype.kind == "f":
        # numpy infers float64 for ints mixing the int64 and uint64 ranges; check the values
        return _exact_integers(data, target, datatype=datatype, what=what).reshape(shape)
    accepted = _ACCEPTED_KINDS[target.kind]
    if raw.dtype.kind not in accepted and not (target.kind == "b" and raw.dtype.kind in "iu"):
        raise ProtocolError(
            f"{what}: data holds {_kind_name(raw.dtype)} values, which are not valid {datatype}"
        )
    if target.kind in "iub" and raw.dtype.kind in "iu":
        low, high = (0, 1) if target.kind == "b" else (np.iinfo(target).min, np.iinfo(target).max)
        if raw.min() < low or raw.max() > high:
            raise ProtocolError(f"{what}: values outside the range of {datatype} [{low}, {high}]")
    try:
        with np.errstate(over="raise", invalid="raise"):
            array = raw.astype(target, copy=False)
    except FloatingPointError:
        raise ProtocolError(f"{what}: values outside the range of {datatype}") from None
    return array.reshape(shape)


def _exact_integers(data: Any, target: np.dtype[Any], *, datatype: str, what: str) -> np.ndarray:
    values = np.array(data, dtype=object).reshape(-1).tolist()
    info = np.iinfo(target)
    if not all(type(v) is int and info.min <= v <= info.max for v in values):
        raise ProtocolError(
            f"{what}: data must be integers in the range of {datatype} [{info.min}, {info.max}]"
        )
    return np.array(values, dtype=target)


def array_to_json(array: np.ndarray) -> np.ndarray | list[Any]:
    """Flat, row-major data for a JSON response (numpy arrays go to orjson as they are)."""
    if array.dtype.kind in "OUS":
        return [_text(x) for x in array.reshape(-1).tolist()]
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array).reshape(-1)


def _flatten_strings(data: Any, out: list[Any], *, what: str, depth: int = 0) -> None:
    if isinstance(data, str):
        out.append(data)
    elif isinstance(data, list) and depth < 32:
        for item in data:
            _flatten_strings(item, out, what=what, depth=depth + 1)
    else:
        raise ProtocolError(
            f"{what}: BYTES data must be (nested lists of) strings, found {type(data).__name__}"
        )


def _check_count(got: int, count: int, shape: tuple[int, ...], *, what: str) -> None:
    if got != count:
        raise ProtocolError(
            f"{what}: data has {got} elements but shape {list(shape)} needs {count}"
        )


def _kind_name(dtype: np.dtype[Any]) -> str:
    return {
        "b": "boolean",
        "i": "integer",
        "u": "integer",
        "f": "floating-point",
        "U": "string",
    }.get(dtype.kind, "non-numeric")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(
                'an output holds bytes that are not UTF-8 text; request it with "binary_data": true'
            ) from None
    return str(value)
