"""Load a pickle or joblib file only after an opcode scan, through an allowlisting unpickler."""

from __future__ import annotations

import importlib
import io
import os
import pickle
import sys
from collections.abc import Iterable
from typing import Any

from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler

from shipyard.errors import UnsafePickleError, UnsupportedModelError
from shipyard.safepickle.allowlist import (
    JOBLIB_WRAPPER,
    compat_name,
    global_refusal,
    normalize_extra_allowed,
    resolved_refusal,
)
from shipyard.safepickle.compression import DEFAULT_MAX_DECOMPRESSED, decompress
from shipyard.safepickle.report import ScanReport
from shipyard.safepickle.scan import open_model_file, scan_bytes

_SHOWN_FINDINGS = 5
_ADVICE = (
    "convert the model to skops or ONNX, or pass --allow-global module.Name only for "
    "classes you have reviewed"
)


def _untrusted_message(name: str) -> str:
    return (
        f"{name}: refusing to load a pickle-based file: unpickling can run arbitrary code. "
        "Convert the model to skops or ONNX, or pass --trust-pickle to have it scanned opcode "
        "by opcode and loaded only if every global is on the allowlist "
        "(add --allow-global module.Name for your own reviewed classes)"
    )


def _findings_message(report: ScanReport) -> str:
    shown = "; ".join(f.describe() for f in report.findings[:_SHOWN_FINDINGS])
    more = len(report.findings) - _SHOWN_FINDINGS
    extra = f" (+{more} more)" if more > 0 else ""
    return (
        f"{report.path}: refusing to load {report.format} file: {len(report.findings)} "
        f"problem(s) found by the pickle scan: {shown}{extra}. To go on, {_ADVICE}"
    )


def resolve_global(module: str, name: str, *, extra: frozenset[str], joblib: bool) -> Any:
    """find_class for the loaders: import module.name only when the allowlist permits it."""
    module, name = compat_name(module, name)
    full = f"{module}.{name}"
    reason = global_refusal(module, name, extra=extra)
    if reason is None and full == JOBLIB_WRAPPER and not joblib:
        reason = f"{full} is only valid inside a joblib file"
    if reason is not None:
        raise UnsafePickleError(f"refusing to import {full} while unpickling: {reason}")
    sys.audit("pickle.find_class", module, name)
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    reason = resolved_refusal(module, name, obj, extra=extra)
    if reason is not None:
        raise UnsafePickleError(f"refusing to import {full} while unpickling: {reason}")
    return obj


class _AllowlistUnpickler(pickle.Unpickler):
    """The C unpickler with find_class limited to the allowlist (defense in depth)."""

    def __init__(self, file: io.BytesIO, *, extra: frozenset[str]) -> None:
        super().__init__(file)
        self._extra = extra

    def find_class(self, module: str, name: str, /) -> Any:
        return resolve_global(module, name, extra=self._extra, joblib=False)


class _AllowlistNumpyUnpickler(NumpyUnpickler):  # type: ignore[misc]
    """joblib's unpickler with find_class limited to the allowlist, nested pickles included."""

    dispatch = NumpyUnpickler.dispatch.copy()

    def __init__(self, name: str, file: io.BytesIO, *, extra: frozenset[str]) -> None:
        try:
            super().__init__(name, file, ensure_native_byte_order=True)
        except TypeError:  # joblib < 1.5 has no byte-order option
            super().__init__(name, file)
        self._extra = extra

    def find_class(self, module: str, name: str) -> Any:
        return resolve_global(module, name, extra=self._extra, joblib=True)

    def load_build(self) -> None:
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
        wrapper = self.stack[-1]
        if not isinstance(wrapper, NumpyArrayWrapper):
            return
        self.stack.pop()
        if wrapper.dtype.hasobject:
            # an object array is a nested pickle; route it through the same find_class
            inner = pickle._Unpickler(self.file_handle)
            inner.find_class = self.find_class  # type: ignore[method-assign]
            self.stack.append(inner.load())
        elif hasattr(self, "ensure_native_byte_order"):
            self.stack.append(wrapper.read(self, self.ensure_native_byte_order))
        else:
            self.stack.append(wrapper.read(self))

    dispatch[pickle.BUILD[0]] = load_build


def load_pickle_file(
    path: str | os.PathLike[str],
    *,
    trust_pickle: bool,
    extra_allowed: Iterable[str] = (),
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED,
) -> object:
    """Load a pickle or joblib model (plain or compressed) only if its scan is clean.

    Without trust_pickle this always refuses. With it, the file is read once, scanned, and
    the same bytes are unpickled with a find_class that only resolves allowlisted globals. Of
    several concatenated pickles only the first object is returned, as pickle.load does.
    Torch checkpoints are scanned but never loaded here: use torch.load(weights_only=True).
    """
    name = os.fspath(path)
    if not trust_pickle:
        raise UnsafePickleError(_untrusted_message(name))
    extra = normalize_extra_allowed(extra_allowed)
    with open_model_file(name) as fh:
        data = fh.read()
    report = scan_bytes(
        data, extra_allowed=extra, name=name, max_decompressed_bytes=max_decompressed_bytes
    )
    if not report.safe:
        raise UnsafePickleError(_findings_message(report))
    fmt = report.format
    if fmt.startswith("torch"):
        raise UnsupportedModelError(
            f"{name}: {fmt} checkpoints are scanned but not loaded by Shipyard's pickle loader; "
            "load them with torch.load(path, weights_only=True) and export to ONNX"
        )
    try:
        if fmt == "pickle":
            return _AllowlistUnpickler(io.BytesIO(data), extra=extra).load()
        if fmt == "joblib":
            return _AllowlistNumpyUnpickler(name, io.BytesIO(data), extra=extra).load()
        if fmt.startswith("joblib-compressed:"):
            codec = fmt.split(":", 1)[1]
            plain = decompress(data, codec, cap=max_decompressed_bytes)
            return _AllowlistNumpyUnpickler(name, io.BytesIO(plain), extra=extra).load()
    except UnsafePickleError:
        raise
    except Exception as exc:
        message = f"{name}: passed the pickle scan but failed to load: {exc}"
        raise UnsafePickleError(message) from exc
    raise UnsupportedModelError(f"{name}: a {fmt} file holds no pickle this loader can read")
