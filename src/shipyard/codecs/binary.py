"""One tensor between the V2 binary tensor extension's raw bytes and numpy.

Layout: little-endian, row-major, native width; BOOL is one byte (0 or 1); each BYTES
element is a 4-byte little-endian unsigned length followed by that many bytes. Numeric
inputs are zero-copy views (`np.frombuffer`) into the request body.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from shipyard.codecs.errors import ProtocolError
from shipyard.codecs.limits import DecodeLimits, check_bytes_element
from shipyard.package.dtypes import DTYPES

WIRE_DTYPES: dict[str, np.dtype[Any]] = {d.v2: d.wire for d in DTYPES if d.wire is not None}
"""Each numeric V2 datatype's element in the binary layout (BYTES is length-prefixed)."""
_LENGTH = struct.Struct("<I")


def array_from_bytes(
    buffer: memoryview,
    *,
    datatype: str,
    shape: tuple[int, ...],
    what: str,
    limits: DecodeLimits | None = None,
) -> np.ndarray:
    """The tensor `what` stored in `buffer`, whose size must match shape and datatype exactly.

    With `limits`, a BYTES element over `max_bytes_element` is RequestTooLarge (413).
    """
    count = math.prod(shape)
    if datatype == "BYTES":
        return _strings_from_bytes(buffer, count, what=what, limits=limits).reshape(shape)
    wire = WIRE_DTYPES[datatype]
    expected = count * wire.itemsize
    if len(buffer) != expected:
        raise ProtocolError(
            f"{what}: binary_data_size is {len(buffer)} bytes but {datatype} shape {list(shape)} "
            f"needs exactly {expected}"
        )
    array = np.frombuffer(buffer, dtype=wire)
    if datatype == "BOOL":
        if array.size and array.max() > 1:
            raise ProtocolError(f"{what}: BOOL bytes must be 0 or 1")
        array = array.view(np.bool_)
    elif not array.dtype.isnative:  # big-endian hosts only
        array = array.astype(array.dtype.newbyteorder("="))
    return array.reshape(shape)


def array_to_bytes(array: np.ndarray, *, datatype: str) -> bytes:
    """The raw bytes of a tensor in the binary tensor layout."""
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1).tolist():
            data = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    wire = WIRE_DTYPES[datatype]
    if datatype == "BOOL":
        array = array.astype(np.bool_, copy=False).view(np.uint8)
    return np.ascontiguousarray(array, dtype=wire).tobytes()


def _strings_from_bytes(
    buffer: memoryview, count: int, *, what: str, limits: DecodeLimits | None
) -> np.ndarray:
    items: list[bytes] = []
    offset, end = 0, len(buffer)
    while offset < end:
        if offset + 4 > end:
            raise ProtocolError(f"{what}: BYTES data ends inside a 4-byte length prefix")
        (length,) = _LENGTH.unpack_from(buffer, offset)
        offset += 4
        if offset + length > end:
            raise ProtocolError(
                f"{what}: BYTES element {len(items)} claims {length} bytes, "
                f"only {end - offset} remain"
            )
        check_bytes_element(length, limits, what=what)
        items.append(bytes(buffer[offset : offset + length]))
        offset += length
        if len(items) > count:
            break
    if len(items) != count:
        raise ProtocolError(
            f"{what}: binary BYTES data holds {len(items)}{'+' if offset < end else ''} elements, "
            f"shape needs {count}"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array
