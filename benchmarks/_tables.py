"""Tables of the serving benchmark: numbers, ratios to raw, Triton and the baseline."""

from __future__ import annotations

import math
from collections.abc import Sequence

from benchmarks._rows import JSON_, RAW, TRITON, Row


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "—"
    return f"{_sig(a / b)}×"


def num(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else _sig(value)


def _sig(value: float) -> str:
    """Three significant digits, no exponent: 0.00437, 0.812, 12.3, 1,234."""
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{digits}f}"


def references(rows: Sequence[Row], row: Row) -> tuple[Row | None, Row | None]:
    """(raw row, Triton row) to compare `row` with: same model, same encoding and batching."""
    raw = next((r for r in rows if r.model == row.model and r.server == RAW), None)
    tritons = [r for r in rows if r.model == row.model and r.server == TRITON and r.cells]
    for candidates in (
        [r for r in tritons if r.encoding == row.encoding and r.batching == row.batching],
        [r for r in tritons if r.encoding == row.encoding and r.batching],
        [r for r in tritons if r.encoding == JSON_ and r.batching],
    ):
        if candidates:
            return raw, candidates[0]
    return raw, None


def concurrency_table(rows: Sequence[Row], model: str, c: int) -> list[list[str]]:
    header = [
        "server · request · config",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "req/s ÷ raw",
        "req/s ÷ Triton",
        "p50 ÷ Triton",
        "p99 ÷ Triton",
        "server CPU µs/req",
        "CPU ÷ Triton",
    ]
    table = [header]
    for row in (r for r in rows if r.model == model):
        cell = row.cells.get(c)
        if cell is None:
            table.append([row.label, *["—"] * (len(header) - 1)])
            continue
        raw, triton = references(rows, row)
        rc = raw.cells.get(c) if raw is not None and raw is not row else None
        tc = triton.cells.get(c) if triton is not None and triton is not row else None
        table.append(
            [
                row.label,
                f"{cell.rps:,.0f}",
                num(cell.p50_ms),
                num(cell.p99_ms),
                str(cell.errors)
                if not cell.first_error
                else f"{cell.errors} ({cell.first_error[:60]})",
                ratio(cell.rps, rc.rps) if rc else "—",
                ratio(cell.rps, tc.rps) if tc else "—",
                ratio(cell.p50_ms, tc.p50_ms) if tc else "—",
                ratio(cell.p99_ms, tc.p99_ms) if tc else "—",
                num(cell.server_cpu_us),
                ratio(cell.server_cpu_us, tc.server_cpu_us) if tc else "—",
            ]
        )
    return table


def summary_table(rows: Sequence[Row], model: str, levels: Sequence[int]) -> list[list[str]]:
    header = ["server · request · config"]
    for c in levels:
        header += [
            f"req/s @{c}",
            f"p99 ms @{c}",
            f"÷ raw @{c}",
            f"÷ Triton @{c}",
            f"CPU µs/req @{c}",
        ]
    table = [header]
    for row in (r for r in rows if r.model == model):
        raw, triton = references(rows, row)
        line = [row.label]
        for c in levels:
            cell = row.cells.get(c)
            if cell is None:
                line += ["—"] * 5
                continue
            rc = raw.cells.get(c) if raw is not None and raw is not row else None
            tc = triton.cells.get(c) if triton is not None and triton is not row else None
            line += [
                f"{cell.rps:,.0f}",
                num(cell.p99_ms),
                ratio(cell.rps, rc.rps) if rc else "—",
                ratio(cell.rps, tc.rps) if tc else "—",
                num(cell.server_cpu_us),
            ]
        table.append(line)
    return table


def render_text(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for n, r in enumerate(table):
        cells = [r[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(table: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(table[0]) + " |", "|---" + "|---:" * (len(table[0]) - 1) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
    return lines


def notes(rows: Sequence[Row], model: str) -> list[str]:
    """One line per row that has no numbers, saying why."""
    return [f"- {r.label}: {r.note}" for r in rows if r.model == model and r.note]


def raw_batches(rows: Sequence[Row], model: str) -> str:
    """Which batch size won each raw cell, e.g. '1 conn: batch 1; 32 conns: batch 8'."""
    return "; ".join(
        f"{c} connection(s): batch {cell.batch_size}"
        for r in rows
        if r.model == model and r.server == RAW
        for c, cell in sorted(r.cells.items())
    )
