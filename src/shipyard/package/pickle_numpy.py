"""numpy dtypes in pickles: rebuilt from literal data to size arrays and catch forged flags."""

from __future__ import annotations

import warnings

import numpy as np

from shipyard.package.pickle_allowlist import NUMPY_DTYPE
from shipyard.package.pickle_values import DictV, Global, NotStatic, Obj

_MAX_DEPTH = 32
_MAX_NODES = 100_000


class _Converter:
    """Turns stand-ins into plain values; each dtype is built once, the work is bounded."""

    def __init__(self) -> None:
        self.nodes = 0
        self.dtypes: dict[int, np.dtype[np.generic]] = {}

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
        if isinstance(value, Obj):
            return self.dtype(value, depth + 1)
        raise NotStatic(f"{type(value).__name__} value")

    def dtype(self, obj: Obj, depth: int) -> np.dtype[np.generic]:
        cached = self.dtypes.get(id(obj))
        if cached is not None:
            return cached
        if not isinstance(obj.factory, Global) or obj.factory.full != NUMPY_DTYPE:
            raise NotStatic("dtype is not built by numpy.dtype")
        args = self.value(obj.args, depth)
        if not isinstance(args, tuple) or not 1 <= len(args) <= 3 or type(args[0]) is not str:
            raise NotStatic("numpy.dtype arguments are not (str, bool, bool)")
        if any(type(flag) not in (bool, int) or flag not in (0, 1) for flag in args[1:]):
            raise NotStatic("numpy.dtype flags are not booleans")
        if len(args) == 3 and not args[2]:
            raise NotStatic("numpy.dtype(copy=False) would let the state edit numpy's own dtypes")
        align = bool(args[1]) if len(args) > 1 else False
        states = [_checked_state(self.value(state, depth)) for state in obj.states]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                # copy=True always: a scan must never mutate numpy's shared builtin descriptors
                dtype = np.dtype(args[0], align, True)
                for state in states:
                    dtype.__setstate__(state)  # type: ignore[attr-defined]
            except Exception as exc:  # numpy rejects the description; so would the loader
                raise NotStatic(f"numpy rejects the dtype ({exc})") from exc
        self.dtypes[id(obj)] = dtype
        return dtype


def _is_int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value < high


def _checked_state(state: object) -> object:
    """Only the state layouts numpy writes (versions 3 and 4), with the types it writes.

    numpy's dtype.__setstate__ trusts its input (a malformed tuple can crash the process), so
    anything else is refused before numpy sees it; the loader would have crashed on it too.
    """
    if not isinstance(state, tuple) or len(state) not in (8, 9) or type(state[0]) is not int:
        raise NotStatic("dtype state is not a version 3/4 tuple as numpy writes it")
    if (len(state), state[0]) not in ((8, 3), (9, 4)):
        raise NotStatic("dtype state is not a version 3/4 tuple as numpy writes it")
    _, endian, subarray, names, fields, elsize, alignment, flags = state[:8]
    ok = endian in ("<", ">", "|", "=") and type(endian) is str
    ok = ok and _is_int(elsize, -1, 1 << 40) and _is_int(alignment, -1, 1 << 16)
    ok = ok and _is_int(flags, 0, 256) and (names is None) == (fields is None)
    if subarray is not None:
        ok = ok and isinstance(subarray, tuple) and len(subarray) == 2
        ok = ok and isinstance(subarray[0], np.dtype) and isinstance(subarray[1], tuple)
        ok = ok and all(_is_int(dim, 0, 1 << 40) for dim in subarray[1])
    if names is not None:
        ok = ok and isinstance(names, tuple) and all(type(name) is str for name in names)
        ok = ok and len(set(names)) == len(names)
        ok = ok and isinstance(fields, dict) and set(fields) == set(names) == set(fields)
        for field in fields.values() if ok and isinstance(fields, dict) else ():
            ok = ok and isinstance(field, tuple) and len(field) in (2, 3)
            ok = ok and isinstance(field[0], np.dtype) and _is_int(field[1], 0, 1 << 40)
            ok = ok and (len(field) == 2 or field[2] is None or type(field[2]) is str)
    if len(state) == 9:
        ok = ok and (state[8] is None or isinstance(state[8], dict))
    if not ok:
        raise NotStatic("dtype state does not have the types numpy writes")
    return state


def build_dtype(obj: Obj) -> np.dtype[np.generic]:
    """Rebuild numpy.dtype(*args) then __setstate__(state) from literal data, as unpickling does.

    This is the only object a scan constructs: numpy parses the literal type string and state
    exactly as it will at load time, which is how the scan learns the item size and whether the
    array holds Python objects (a nested pickle) without guessing numpy's rules.
    """
    return _Converter().dtype(obj, 0)


def _clean(dtype: np.dtype[np.generic]) -> np.dtype[np.generic]:
    """The same layout described afresh, so numpy derives its flags itself."""
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return np.dtype((_clean(base), shape))
    if dtype.fields is not None and dtype.names is not None:
        fields = [dtype.fields[name] for name in dtype.names]
        spec: dict[str, object] = {
            "names": list(dtype.names),
            "formats": [_clean(field[0]) for field in fields],
            "offsets": [field[1] for field in fields],
            "itemsize": dtype.itemsize,
        }
        titles = [field[2] if len(field) > 2 else None for field in fields]
        if any(title is not None for title in titles):
            spec["titles"] = titles
        clean: np.dtype[np.generic] = np.dtype(spec, align=dtype.isalignedstruct)  # type: ignore[call-overload]
        return clean
    return np.dtype(dtype.str)


def dtype_problem(obj: Obj) -> str | None:
    """Why a numpy.dtype built by the pickle is unsafe (None when it is a plain dtype).

    numpy takes a dtype's flags from the pickled state; an object dtype whose flags claim no
    Python objects lets frombuffer, ndarray state or joblib's raw reads turn attacker bytes
    into object pointers. The flags must equal those numpy derives for the same layout.
    """
    try:
        dtype = build_dtype(obj)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            todo = [dtype]
            while todo:
                item = todo.pop()
                clean = _clean(item)
                if item.flags != clean.flags:
                    return f"numpy dtype {item} has forged flags {item.flags}"
                if item != clean or item.itemsize != clean.itemsize:
                    return f"numpy dtype {item} has an inconsistent layout"
                if item.subdtype is not None:
                    todo.append(item.subdtype[0])
                if item.fields is not None:
                    todo.extend(field[0] for field in item.fields.values())
    except NotStatic as exc:
        return f"numpy dtype cannot be checked statically: {exc}"
    except Exception as exc:  # numpy cannot re-describe it: refuse rather than guess
        return f"numpy dtype cannot be checked: {exc}"
    return None
