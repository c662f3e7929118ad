"""Opcode-level pickle safety: list every global a pickle-based file would import, run nothing."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable
from functools import partial
from typing import BinaryIO

from shipyard.errors import NotFoundError, UsageError
from shipyard.safepickle.allowlist import (
    DEFAULT_ALLOWLIST,
    TORCH_ALLOWLIST,
    global_refusal,
    normalize_extra_allowed,
)
from shipyard.safepickle.compression import DEFAULT_MAX_DECOMPRESSED
from shipyard.safepickle.formats import ScanState, scan_buffer
from shipyard.safepickle.report import Finding, ScanReport
from shipyard.safepickle.stream import Buffer

__all__ = [
    "DEFAULT_ALLOWLIST",
    "DEFAULT_MAX_DECOMPRESSED",
    "TORCH_ALLOWLIST",
    "Finding",
    "ScanReport",
    "scan_bytes",
    "scan_file",
]


def _scan(data: Buffer, *, extra_allowed: Iterable[str], name: str, max_bytes: int) -> ScanReport:
    extra = normalize_extra_allowed(extra_allowed)
    state = ScanState(
        refusal=partial(global_refusal, extra=extra),
        torch_refusal=partial(global_refusal, extra=extra, torch=True),
        max_decompressed=max_bytes,
    )
    fmt = scan_buffer(data, state)
    return ScanReport(
        path=name,
        format=fmt,
        globals=tuple(sorted(state.globals_seen)),
        findings=tuple(state.findings),
        pickles=state.pickles,
    )


def scan_bytes(
    data: bytes,
    *,
    extra_allowed: Iterable[str] = (),
    name: str = "<bytes>",
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED,
) -> ScanReport:
    """Scan an in-memory pickle, joblib file or torch zip; report.safe says whether to load it.

    Opcodes are walked with a static model of the unpickler's stack, memo and frames, so
    STACK_GLOBAL operands are resolved exactly, joblib's inline array bytes are skipped the way
    NumpyUnpickler skips them, and whatever the model cannot follow becomes a Finding rather
    than passing as clean. Nothing is imported or unpickled; the only objects built are numpy
    dtypes from literal arguments. Raises UnsafePickleError when extra_allowed names a
    hard-denied global such as os.system, UsageError when a name is not "module.QualName".
    """
    return _scan(
        bytes(data), extra_allowed=extra_allowed, name=name, max_bytes=max_decompressed_bytes
    )


def scan_file(
    path: str | os.PathLike[str],
    *,
    extra_allowed: Iterable[str] = (),
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED,
) -> ScanReport:
    """Scan a file on disk (memory-mapped, never imported or unpickled)."""
    name = os.fspath(path)
    with open_model_file(name) as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return _scan(b"", extra_allowed=extra_allowed, name=name, max_bytes=0)
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return _scan(
                view, extra_allowed=extra_allowed, name=name, max_bytes=max_decompressed_bytes
            )


def open_model_file(name: str) -> BinaryIO:
    """open(name, "rb") with Shipyard errors: NotFoundError, or UsageError when unreadable."""
    try:
        return open(name, "rb")  # the caller closes it
    except FileNotFoundError as exc:
        raise NotFoundError(f"{name}: no such file") from exc
    except OSError as exc:
        raise UsageError(f"{name}: cannot read it ({exc.strerror or exc})") from exc
