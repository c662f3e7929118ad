"""Helpers for calling third-party tools quietly and reporting their failures briefly."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
from collections.abc import Iterator
from types import ModuleType

# Loggers of the tools we call; their warnings are summarised in step notes instead.
TOOL_LOGGERS = ("onnxruntime", "onnxslim")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Quantizers and simplifiers print and log progress; a library must not write to the
    caller's stdout or stderr, so both are held back while they run."""
    saved = {name: logging.getLogger(name).level for name in TOOL_LOGGERS}
    for name in saved:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def import_keeping_logging(module: str) -> ModuleType:
    """Import `module`, undoing any logging.basicConfig() it runs at import time.

    onnxruntime.quantization.matmul_nbits_quantizer configures the root logger at INFO on
    import, which would make every library in the caller's process chatty.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return importlib.import_module(module)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def short(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, cut to `limit` characters."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."
