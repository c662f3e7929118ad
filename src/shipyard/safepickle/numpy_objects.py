"""numpy dtypes in pickles: rebuilt with public constructors and accepted only in canonical form.

numpy's dtype.__setstate__ trusts its input: a malformed state can crash the process, and
forged flags (an object dtype claiming to hold no objects) let frombuffer, ndarray state or
joblib's raw reads turn attacker bytes into object pointers. So the scan never calls it:
it rebuilds the dtype the state describes with numpy's ordinary constructors and accepts
the pickle only if that dtype pickles back to exactly the same arguments and state.
"""

from __future__ import annotations

import warnings

import numpy as np

from shipyard.safepickle.allowlist import NUMPY_DTYPE
from shipyard.safepickle.values import DictV, Global, NotStatic, Obj

Dtype = np.dtype[np.generic]

_MAX_DEPTH = 32
_MAX_NODES = 100_000
_ALIGNED_STRUCT = 0x80
_LIST_PICKLE = 0x02
_ARRAY_FACTORIES = frozenset(
    f"{core}.multiarray._reconstruct" for core in ("numpy.core", "numpy._core")
)
_MASKED_FACTORIES = frozenset(
    {"numpy.ma.core._mareconstruct", "numpy.ma.MaskedArray", "numpy.ma.core.MaskedArray"}
)


def _is(factory: object, full: str) -> bool:
    return isinstance(factory, Global) and factory.full == full


def _is_int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value < high


def _same(a: object, b: object) -> bool:
    """Equality without numpy's coercions (a dtype equals the string 'f8', 1 equals True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, np.dtype) and isinstance(b, np.dtype):
        return bool(a == b) and a.flags == b.flags
    return bool(a == b)


class _Converter:
    """Turns stand-ins into plain values; each dtype is built once, the work is bounded."""

    def __init__(self) -> None:
        self.nodes = 0
        self.dtypes: dict[int, Dtype] = {}

    def value(self, value: object, depth: int) -> object:
        self.nodes += 1
        if depth > _MAX_DEPTH or self.nodes > _MAX_NODES:
            raise NotStatic("value too large or nested too deeply")
        if value is None or type(value) in (bool, int, float, str, bytes):
            return value
        if isinstance(value, tuple):
            return tuple(self.value(item, depth + 1) for item in value)
        if isinstance(value, list):
            return [self.value(item, depth + 1) for item in value]
        if isinstance(value, DictV):
            out: dict[object, object] = {}
            for key, item in value.items:
                hashable = self.value(key, depth + 1)
                try:
                    out[hashable] = self.value(item, depth + 1)
                except TypeError as exc:
                    raise NotStatic("unhashable dict key") from exc
            return out
        if isinstance(value, Obj) and _is(value.factory, "_codecs.encode"):
            # protocol 2 spells bytes as _codecs.encode(text, "latin1")
            args = self.value(value.args, depth + 1)
            if isinstance(args, tuple) and len(args) == 2:
                text, encoding = args
                if isinstance(text, str) and encoding in ("latin1", "latin-1"):
                    return text.encode("latin1")
            raise NotStatic("_codecs.encode with other than (str, 'latin1')")
        if isinstance(value, Obj) and _is(value.factory, "builtins.bytes") and value.args == ():
            return b""
        if isinstance(value, Obj):
            return self.dtype(value, depth + 1)
        raise NotStatic(f"{type(value).__name__} value")

    def dtype(self, obj: Obj, depth: int) -> Dtype:
        cached = self.dtypes.get(id(obj))
        if cached is not None:
            return cached
        if not _is(obj.factory, NUMPY_DTYPE):
            raise NotStatic("dtype is not built by numpy.dtype")
        args = self.value(obj.args, depth)
        if not isinstance(args, tuple) or len(args) != 3 or type(args[0]) is not str:
            raise NotStatic("numpy.dtype arguments are not (str, align, copy)")
        flags_ok = all(type(flag) in (bool, int) for flag in args[1:])
        if not flags_ok or args[1] != 0 or args[2] != 1:
            raise NotStatic("numpy.dtype arguments are not (typestr, False, True) as numpy writes")
        if len(obj.states) > 1:
            raise NotStatic("dtype state set more than once (numpy never pickles that)")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                if not obj.states:  # numpy.dtype(typestr, align, copy) and nothing else
                    dtype: Dtype = np.dtype(args[0], align=False, copy=True)
                else:
                    state = _checked_state(self.value(obj.states[0], depth))
                    dtype = _canonical(args[0], state)
            except NotStatic:
                raise
            except Exception as exc:  # numpy cannot build what the state describes
                raise NotStatic(f"numpy rejects the dtype description ({exc})") from exc
        if obj.states:
            reduced = dtype.__reduce__()
            if not isinstance(reduced, tuple) or len(reduced) != 3:
                raise NotStatic("numpy no longer pickles dtypes as (cls, args, state)")
            _, pickled_args, pickled_state = reduced
            if not _same(pickled_args, (args[0], False, True)):
                raise NotStatic(f"arguments {args} are not the ones numpy writes")
            if not _same(pickled_state, state):
                forged = _same(pickled_state[:7], state[:7]) and state[7] != pickled_state[7]
                raise NotStatic("forged flags" if forged else "state is not one numpy writes")
        self.dtypes[id(obj)] = dtype
        return dtype


def _checked_state(state: object) -> tuple[object, ...]:
    """A version 3 or 4 state tuple with the element types numpy writes."""
    if not isinstance(state, tuple) or len(state) not in (8, 9):
        raise NotStatic("dtype state is not a version 3/4 tuple")
    if not _same(state[0], 3 if len(state) == 8 else 4):
        raise NotStatic("dtype state is not a version 3/4 tuple")
    _, endian, subarray, names, fields, elsize, alignment, flags = state[:8]
    ok = type(endian) is str and endian in ("<", ">", "|", "=")
    ok = ok and _is_int(elsize, -1, 1 << 40) and _is_int(alignment, -1, 1 << 16)
    ok = ok and _is_int(flags, 0, 256) and (names is None) == (fields is None)
    if subarray is not None:
        ok = ok and isinstance(subarray, tuple) and len(subarray) == 2
        ok = ok and isinstance(subarray[0], np.dtype) and isinstance(subarray[1], tuple)
        ok = ok and all(_is_int(dim, 0, 1 << 40) for dim in subarray[1])
    if names is not None:
        ok = ok and isinstance(names, tuple) and all(type(name) is str for name in names)
        ok = ok and isinstance(fields, dict) and _fields_ok(names, fields)
    if not ok or (len(state) == 9 and not _metadata_ok(state[8])):
        raise NotStatic("dtype state does not have the types numpy writes")
    return state


def _fields_ok(names: tuple[str, ...], fields: dict[object, object]) -> bool:
    """Each name maps to (dtype, offset[, title]); titles also appear as keys."""
    titles: set[object] = set()
    for name in names:
        field = fields.get(name)
        if not isinstance(field, tuple) or len(field) not in (2, 3):
            return False
        if not isinstance(field[0], np.dtype) or not _is_int(field[1], 0, 1 << 40):
            return False
        if len(field) == 3 and field[2] is not None:
            if type(field[2]) is not str or not _same(fields.get(field[2]), field):
                return False
            titles.add(field[2])
    return len(set(names)) == len(names) and set(fields) == set(names) | titles


def _metadata_ok(metadata: object) -> bool:
    """None, a metadata dict, or for datetimes (dict-or-None, (unit, num, den, events))."""
    if metadata is None or isinstance(metadata, dict):
        return True
    if not isinstance(metadata, tuple) or len(metadata) != 2:
        return False
    extra, unit = metadata
    return (
        (extra is None or isinstance(extra, dict))
        and isinstance(unit, tuple)
        and len(unit) == 4
        and type(unit[0]) is bytes
        and all(_is_int(part, 1, 1 << 31) for part in unit[1:])
    )


def _canonical(typestr: str, state: tuple[object, ...]) -> Dtype:
    """The dtype that state describes, built with numpy's ordinary constructors only."""
    _, endian, subarray, names, fields, elsize, _, flags = state[:8]
    metadata = state[8] if len(state) == 9 else None
    extra, unit = metadata if isinstance(metadata, tuple) else (metadata, None)
    dtype: Dtype
    if isinstance(subarray, tuple):
        dtype = np.dtype((subarray[0], subarray[1]))
    elif isinstance(names, tuple) and isinstance(fields, dict):
        entries = [fields[name] for name in names]
        spec: dict[str, object] = {
            "names": list(names),
            "formats": [entry[0] for entry in entries],
            "offsets": [entry[1] for entry in entries],
            "itemsize": elsize,
        }
        titles = [entry[2] if len(entry) == 3 else None for entry in entries]
        if any(title is not None for title in titles):
            spec["titles"] = titles
        aligned = isinstance(flags, int) and bool(flags & _ALIGNED_STRUCT)
        dtype = np.dtype(spec, align=aligned)  # type: ignore[call-overload]
    elif isinstance(unit, tuple):
        unit_name = unit[0].decode("ascii") if isinstance(unit[0], bytes) else "?"
        dtype = np.dtype(f"{typestr}[{unit[1]}{unit_name}]")
    else:
        dtype = np.dtype(typestr)
    if endian in ("<", ">") and dtype.byteorder != "|":
        dtype = dtype.newbyteorder(str(endian))  # type: ignore[arg-type]
    if isinstance(extra, dict):
        dtype = np.dtype(dtype, metadata=extra)
    return dtype


def build_dtype(obj: Obj) -> Dtype:
    """The numpy dtype a pickled numpy.dtype(...) + BUILD yields, or NotStatic if not canonical."""
    return _Converter().dtype(obj, 0)


def _array_state_problem(state: object, *, masked: bool) -> str | None:
    """ndarray.__setstate__ input as numpy writes it; object data must list every element.

    numpy fills an object array from the list without checking its length, so a short list
    reads past its end: the element count must match the shape exactly.
    """
    sizes = (7,) if masked else (4, 5)
    if not isinstance(state, tuple) or len(state) not in sizes:
        return "array state is not the tuple numpy writes"
    if masked:
        _, shape, typecode, _, raw, _, _ = state
    elif len(state) == 5:
        _, shape, typecode, _, raw = state
    else:
        shape, typecode, _, raw = state
    if not isinstance(shape, tuple) or not all(_is_int(dim, 0, 1 << 40) for dim in shape):
        return "array shape is not a tuple of sizes"
    if not isinstance(typecode, Obj):
        return "array dtype is not a numpy.dtype"
    try:
        dtype = build_dtype(typecode)
    except NotStatic as exc:
        return f"numpy dtype refused: {exc}"
    count = 1
    for dim in shape:
        count *= dim
    if dtype.flags & _LIST_PICKLE:
        if not isinstance(raw, list) or len(raw) != count:
            return f"object array data must be a list of exactly {count} items"
    elif isinstance(raw, list):
        return "array data is a list for a dtype numpy stores as bytes"
    return None


def numpy_build_problem(target: Obj, state: object) -> str | None:
    """Why BUILD(state) on an object numpy made would be unsafe (None when it is fine)."""
    factory = target.factory
    if not isinstance(factory, Global) or not (factory.module + ".").startswith("numpy."):
        return None
    if factory.full == NUMPY_DTYPE:
        try:
            build_dtype(target)
        except NotStatic as exc:
            return f"numpy dtype refused: {exc}"
        return None
    if factory.full in _ARRAY_FACTORIES:
        return _array_state_problem(state, masked=False)
    if factory.full in _MASKED_FACTORIES:
        return _array_state_problem(state, masked=True)
    if factory.module.startswith("numpy.random"):
        return None  # generators validate their state in their own setters
    return f"BUILD on the result of {factory.full}: numpy never pickles that"
