"""The settings table of docs/serving.md, generated from the settings' field docstrings.

`settings_table()` is one Markdown row per server setting (nested ones as
`limits.max_body_bytes`): its name, environment variable, default and the first paragraph
of its docstring.
`python -m shipyard.serving.settings_doc docs/serving.md` rewrites the table in place,
between the `BEGIN`/`END` marker lines; a test checks the file matches.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from shipyard.serving.settings import ServerSettings

BEGIN = "<!-- settings table: generated from serving/settings.py; do not edit by hand -->"
END = "<!-- end of settings table -->"
REGENERATE = "python -m shipyard.serving.settings_doc docs/serving.md"
ENV_PREFIX = "SHIPYARD_"
_HEADER = "| Setting | Environment | Default | Meaning |\n|---|---|---|---|"


def settings_table() -> str:
    """The whole table, header included (no trailing newline)."""
    rows = [_row(path, default, doc) for path, default, doc in _fields(ServerSettings, ())]
    return "\n".join([_HEADER, *rows])


def undocumented() -> list[str]:
    """Settings without a docstring (the table needs one for every setting)."""
    return [".".join(path) for path, _, doc in _fields(ServerSettings, ()) if not doc]


def replace_table(text: str) -> str:
    """`text` (docs/serving.md) with the table between the markers regenerated."""
    try:
        start = text.index(BEGIN) + len(BEGIN)
        end = text.index(END, start)
    except ValueError:
        raise ValueError(f"the settings table markers are missing: {BEGIN!r} ... {END!r}") from None
    return f"{text[:start]}\n{settings_table()}\n{text[end:]}"


def _fields(
    model: type[BaseModel], prefix: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], Any, str]]:
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        default = info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            yield from _fields(type(default), path)
            continue
        yield path, default, _first_paragraph(info.description or "")


def _row(path: tuple[str, ...], default: Any, doc: str) -> str:
    env = ENV_PREFIX + "__".join(path).upper()
    return f"| `{'.'.join(path)}` | `{env}` | {_shown(path[-1], default)} | {doc} |"


def _shown(name: str, value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and "bytes" in name and value >= 1024:
        for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value % size == 0:
                return f"{value // size} {unit}"
    if isinstance(value, tuple):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def _first_paragraph(doc: str) -> str:
    paragraph = doc.strip().split("\n\n", 1)[0]
    return " ".join(paragraph.split()).replace("|", "\\|")


def main(argv: list[str]) -> int:
    """Rewrite the settings table in the Markdown file named by argv[0]."""
    if len(argv) != 1:
        sys.stderr.write(f"usage: {REGENERATE}\n")
        return 2
    path = Path(argv[0])
    path.write_text(replace_table(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
