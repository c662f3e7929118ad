"""numpy dtypes in pickles: rebuilt from literal data to size arrays and catch forged flags."""

from __future__ import annotations

import warnings

import numpy as np

from shipyard.package.pickle_allowlist import NUMPY_DTYPE
from shipyard.package.pickle_values import DictV, Global, NotStatic, Obj

_MAX_DEPTH = 32


def literal(value: object, depth: int = 0) -> object:
    """The plain Python value of a stand-in, building numpy dtypes; NotStatic otherwise."""
    if depth > _MAX_DEPTH:
        raise NotStatic("nested too deeply")
    if value is None or type(value) in (bool, int, float, str, bytes):
        return value
    if isinstance(value, tuple):
        return tuple(literal(item, depth + 1) for item in value)
    if isinstance(value, list):
        return [literal(item, depth + 1) for item in value]
    if isinstance(value, DictV):
        out: dict[object, object] = {}
        for key, item in value.items:
            hashable = literal(key, depth + 1)
            try:
                out[hashable] = literal(item, depth + 1)
            except TypeError as exc:
                raise NotStatic("unhashable dict key") from exc
        return out
    if isinstance(value, Obj):
        return build_dtype(value, depth + 1)
    raise NotStatic(f"{type(value).__name__} value")


def build_dtype(obj: Obj, depth: int = 0) -> np.dtype[np.generic]:
    """Rebuild numpy.dtype(*args) then __setstate__(state) from literal data, as unpickling does.

    This is the only object a scan constructs: numpy parses the literal type string and state
    exactly as it will at load time, which is how the scan learns the item size and whether the
    array holds Python objects (a nested pickle) without guessing numpy's rules.
    """
    if not isinstance(obj.factory, Global) or obj.factory.full != NUMPY_DTYPE:
        raise NotStatic("dtype is not built by numpy.dtype")
    args = literal(obj.args, depth)
    if not isinstance(args, tuple) or not 1 <= len(args) <= 3 or type(args[0]) is not str:
        raise NotStatic("numpy.dtype arguments are not (str, bool, bool)")
    if any(type(flag) not in (bool, int) or flag not in (0, 1) for flag in args[1:]):
        raise NotStatic("numpy.dtype flags are not booleans")
    if len(args) == 3 and not args[2]:
        raise NotStatic("numpy.dtype(copy=False) would let the state edit numpy's own dtypes")
    align = bool(args[1]) if len(args) > 1 else False
    states = [literal(state, depth) for state in obj.states]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            # copy=True always: a scan must never mutate numpy's shared builtin descriptors
            dtype = np.dtype(args[0], align, True)
            for state in states:
                dtype.__setstate__(state)  # type: ignore[attr-defined]
        except Exception as exc:  # numpy rejects the description; so would the loader
            raise NotStatic(f"numpy rejects the dtype ({exc})") from exc
    return dtype


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
                if item.flags != _clean(item).flags:
                    return f"numpy dtype {item} has forged flags {item.flags}"
                if item.subdtype is not None:
                    todo.append(item.subdtype[0])
                if item.fields is not None:
                    todo.extend(field[0] for field in item.fields.values())
    except NotStatic as exc:
        return f"numpy dtype cannot be checked statically: {exc}"
    except Exception as exc:  # numpy cannot re-describe it: refuse rather than guess
        return f"numpy dtype cannot be checked: {exc}"
    return None
