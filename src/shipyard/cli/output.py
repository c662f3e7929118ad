"""What the command line prints: messages, tables and JSON, readable in a terminal and in a log.

Everything a command shows goes through here. On a terminal rich wraps to its width and adds
colour; anywhere else (a pipe, a CI log, a file) nothing is cut to a width (rich would assume
80 columns and end a name as "int8-dynam…") and no colour codes are written.
"""

from __future__ import annotations

import json
import sys
from contextlib import AbstractContextManager
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.status import Status
from rich.table import Table

UNBOUNDED = 100_000
"""Columns a table or line may take when the output is not a terminal: in effect no limit."""


class _Console(Console):
    """A rich Console only as narrow as the terminal it writes to, if any."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(UNBOUNDED, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


out = _Console()
"""Standard output: results, tables."""
err = _Console(stderr=True)
"""Standard error: progress, notes, warnings; never what a script would parse."""


def literal(text: str) -> str:
    """`text` shown as it is inside a marked-up message (`[x]` is not a style there)."""
    return escape(text)


def say(text: str) -> None:
    """One message on stdout (rich markup), on one line whatever the width."""
    out.print(text, soft_wrap=True)


def note(text: str) -> None:
    """One message on stderr (rich markup): what to do next, a warning, a verdict."""
    err.print(text, soft_wrap=True)


def fail(text: str) -> None:
    """The one-line error of a failed command, on stderr, without markup."""
    print(f"error: {text}", file=sys.stderr)


def table(*headers: str, title: str | None = None) -> Table:
    return Table(*headers, title=title)


def show(rows: Table) -> None:
    """A table on stdout."""
    out.print(rows)


def write(text: str) -> None:
    """Plain text on stdout, exactly as given (a token, a JSON document)."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def print_json(data: Any) -> None:
    """Machine-readable output (`--json`): indented, keys sorted, one document."""
    write(json.dumps(data, indent=2, sort_keys=True, default=str))


def status(text: str) -> AbstractContextManager[Status]:
    """A spinner on stderr while something runs (shown only on a terminal)."""
    return err.status(text)
