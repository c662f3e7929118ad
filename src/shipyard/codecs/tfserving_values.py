"""TF Serving JSON values (nested lists, scalars, `{"b64": ...}`) to numpy tensors and back."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import orjson

from shipyard.codecs.errors import ProtocolError
from shipyard.codecs.limits import (
    DEFAULT_LIMITS,
    DecodeLimits,
    check_bytes_element,
    check_elements,
)
from shipyard.codecs.tensors import array_from_json
from shipyard.package.tensorspec import TensorSpec

_DUMP = orjson.OPT_SERIALIZE_NUMPY
_MAX_DEPTH = 32


def value_to_array(
    value: Any, *, spec: TensorSpec, what: str, limits: DecodeLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """A JSON value (nested lists, scalars, b64 objects) as a tensor of `spec`'s dtype."""
    what = f"input {what!r}"
    shape = _shape_of(value, what=what)
    check_elements(shape, limits, what=what)
    if spec.dtype == "str":
        flat: list[str | bytes] = []
        _flatten_strings(value, flat, what=what)
        for item in flat:
            if len(item) * 4 > limits.max_bytes_element:  # UTF-8: at most 4 bytes a char
                size = len(item if isinstance(item, bytes) else item.encode("utf-8", "replace"))
                check_bytes_element(size, limits, what=what)
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    if _contains_object(value):
        raise ProtocolError(
            f"{what}: holds an object where a number belongs; the input is {spec.dtype} "
            '({"b64": ...} values are only for string inputs)'
        )
    return array_from_json(value, datatype=spec.v2_datatype, shape=shape, what=what, limits=limits)


def array_to_value(array: np.ndarray, *, name: str) -> Any:
    """A tensor as a JSON-ready value (numpy numbers go to orjson as they are)."""
    if array.dtype.kind in "OUS":
        binary = name.endswith("_bytes")
        flat = [_string_value(x, binary=binary) for x in array.reshape(-1).tolist()]
        return _nest(flat, array.shape)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.ndim == 0:
        return array.reshape(1)[0]
    return np.ascontiguousarray(array)


def is_b64(value: Any) -> bool:
    """A `{"b64": "..."}` object: one binary string value."""
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def dump_body(doc: Any) -> bytes:
    """A response body: `doc` as JSON, numpy arrays and scalars included."""
    return orjson.dumps(doc, option=_DUMP, default=_numpy_default)


def _shape_of(value: Any, *, what: str, depth: int = 0) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    if depth >= _MAX_DEPTH:
        raise ProtocolError(f"{what}: value is nested more than {_MAX_DEPTH} levels deep")
    if not value:
        return (0,)
    inner = _shape_of(value[0], what=what, depth=depth + 1)
    for item in value[1:]:
        if _shape_of(item, what=what, depth=depth + 1) != inner:
            raise ProtocolError(
                f"{what}: value is ragged (lists at the same depth differ in length); "
                "every row must have the same shape"
            )
    return (len(value), *inner)


def _flatten_strings(value: Any, out: list[str | bytes], *, what: str) -> None:
    if isinstance(value, list):
        for item in value:
            _flatten_strings(item, out, what=what)
    elif isinstance(value, str):
        out.append(value)
    elif is_b64(value):
        out.append(_b64decode(value["b64"], what=what))
    else:
        raise ProtocolError(
            f'{what}: string input values must be strings or {{"b64": "..."}}, found '
            f"{type(value).__name__}"
        )


def _contains_object(value: Any) -> bool:
    if isinstance(value, list):
        return any(_contains_object(v) for v in value)
    return isinstance(value, dict)


def _b64decode(text: Any, *, what: str) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError(f'{what}: "b64" must hold a base64 string')
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f'{what}: "b64" is not valid base64 ({exc})') from None


def _string_value(value: Any, *, binary: bool) -> Any:
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
    if not binary:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(raw).decode("ascii")}


def _nest(flat: list[Any], shape: tuple[int, ...]) -> Any:
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def _numpy_default(value: Any) -> Any:
    """What orjson cannot write natively: numpy scalar aliases (longlong) and strided arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.flags.c_contiguous else np.ascontiguousarray(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
