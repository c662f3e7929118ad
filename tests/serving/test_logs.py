"""Server log lines are plain text: no terminal colour codes in the text or JSON format."""

from __future__ import annotations

import json
import logging
import sys

from shipyard.serving.logs import JsonFormatter, TextFormatter, plain

_GREEN = "\x1b[32m"
_RESET = "\x1b[0m"


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, message, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_text_and_json_lines_carry_no_ansi_escapes() -> None:
    record = _record(
        f"Started server process [{_GREEN}42{_RESET}]",
        color_message=f"Started server process [{_GREEN}%d{_RESET}]",
        model=f"{_GREEN}m{_RESET}",
    )
    text = TextFormatter().format(record)
    assert "\x1b" not in text
    assert text.endswith("uvicorn.error Started server process [42] model=m")
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "Started server process [42]" and doc["model"] == "m"
    assert "color_message" not in doc


def test_tracebacks_lose_their_colours_too() -> None:
    try:
        raise RuntimeError(f"{_GREEN}boom{_RESET}")
    except RuntimeError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    assert "\x1b" not in TextFormatter().format(record)
    assert "\x1b" not in json.loads(JsonFormatter().format(record))["exception"]
    assert plain(f"{_GREEN}a{_RESET}\x1b[1;31mb\x1b[0m") == "ab"
