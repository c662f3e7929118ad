"""Structured server logs: text or JSON lines, each carrying the current request id.

The request id lives in a context variable set by the HTTP middleware, so every log line
written while handling a request (on the event loop) names it; `extra={"model": ...,
"version": ...}` fields are kept as JSON keys.

With the JSON format every line the server writes to stderr is JSON from the first one:
uvicorn's loggers and Python warnings go through the same handler (uvicorn's own logging
config, with its banner and colours, is off: `log_config=None`). Access lines
(`shipyard.serving.access`) carry method, path, status, duration_ms, client and request_id
as keys.

Neither format carries terminal colour codes: uvicorn's coloured copy of a message
(`color_message`) is dropped, and any ANSI escape left in a message, an extra field or a
traceback (a library that colours its own errors) is removed, so a log file or a CI log
reads as plain text.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

import orjson

request_id: ContextVar[str | None] = ContextVar("shipyard_request_id", default=None)

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


def _extra(key: str) -> bool:
    """A record attribute a log line shows: not LogRecord's own, not private (Ray's record
    factory adds `_ray_timestamp_ns` to every record once it is imported)."""
    return key not in _STANDARD and not key.startswith("_")


_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
"""An ANSI CSI escape sequence (colours, bold, cursor moves)."""


def plain(text: str) -> str:
    """`text` without ANSI escape sequences."""
    return _ANSI.sub("", text) if "\x1b" in text else text


ACCESS_LOGGER = "shipyard.serving.access"
ACCESS_FIELDS = frozenset({"method", "path", "status", "duration_ms"})
"""Access-line fields a text line already shows in its message (JSON keeps them as keys)."""


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": plain(record.getMessage()),
        }
        for key, value in vars(record).items():
            if _extra(key) and value is not None:
                doc[key] = plain(value) if isinstance(value, str) else value
        if record.exc_info:
            doc["exception"] = plain(self.formatException(record.exc_info))
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time level logger [request id] message key=value ...`"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if _extra(k) and v is not None}
        if record.name == ACCESS_LOGGER:
            extras = {k: v for k, v in extras.items() if k not in ACCESS_FIELDS}
        rid = extras.pop("request_id", None)
        if rid:
            line = line.replace(f" {record.name} ", f" {record.name} [{rid}] ", 1)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return plain(line)


def configure_logging(*, fmt: str = "text", level: str = "info") -> None:
    """Send `shipyard`, `uvicorn` and warnings logs to stderr in the chosen format (`serve`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    logging.captureWarnings(True)  # a warnings.warn() is a log line too, not free text
    for name in ("shipyard", "uvicorn", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
