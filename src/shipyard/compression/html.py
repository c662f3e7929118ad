"""A self-contained HTML page for a comparison: the table, machine facts and plots.

Plots need matplotlib (embedded as base64 PNG); without it the page has the tables only.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shipyard.compression.report import ComparisonReport, ModelFigures
from shipyard.compression.results import CandidateOutcome

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #555; font-size: .9rem; }
.worse, .worse td { color: #b00020; font-weight: 600; }
"""


WORSE_KEYS = {
    "size": "size",
    "gzip size": "gzip size",
    "latency p50 @1": "latency p50",
    "latency p99 @1": "latency p99",
    "session memory": "session memory",
    "mean / min cosine": "mean cosine",
    "top-1 agreement": "top-1 agreement",
    "embedding cosine": "embedding cosine",
    "label agreement": "label agreement",
    "accuracy": "accuracy",
}
"""Table row → the name ComparisonReport.worse uses (throughput rows start `throughput`)."""
WORSE_MARK = "⚠ worse"


def rows(report: ComparisonReport) -> list[tuple[str, str, str, str]]:
    """(metric, baseline, candidate, ratio) rows shared by the CLI table and this page; the
    ratio cell of every figure that got worse starts with WORSE_MARK."""
    b, c, f = report.baseline, report.candidate, report.fidelity

    def acc(figures: ModelFigures) -> str:
        return "—" if figures.accuracy is None else f"{figures.accuracy:.4f}"

    latency = report.latency_spread
    throughput = report.throughput_spread
    drop = report.accuracy_drop
    table = [
        ("size", mib(b.file_bytes), mib(c.file_bytes), f"{report.size_ratio:.2f}× smaller"),
        ("gzip size", mib(b.gzip_bytes), mib(c.gzip_bytes), f"{report.gzip_ratio:.2f}× smaller"),
        (
            "latency p50 @1",
            ms(b.latency_p50_ms),
            ms(c.latency_p50_ms),
            (latency.describe() if latency else f"{report.latency_speedup:.2f}×") + " speed-up",
        ),
        ("latency p99 @1", ms(b.latency_p99_ms), ms(c.latency_p99_ms), _change(b, c, "p99")),
        (
            f"throughput @{c.throughput_batch}",
            f"{b.throughput_rows_per_s:,.0f}/s",
            f"{c.throughput_rows_per_s:,.0f}/s",
            throughput.describe() if throughput else f"{report.throughput_ratio:.2f}×",
        ),
        (
            "session memory",
            mb(b.session_rss_mb),
            mb(c.session_rss_mb),
            f"{_change(b, c, 'memory')} (best effort)".strip(),
        ),
        ("mean / min cosine", "1", f"{f.mean_cosine:.4f} / {f.min_cosine:.4f}", f"{f.rows} rows"),
        ("max abs diff", "0", f"{f.max_abs_diff:.3g}", ""),
        (
            "top-1 agreement",
            "1",
            "—" if f.top1_agreement is None else f"{f.top1_agreement:.4f}",
            "",
        ),
        *_served_rows(report),
        ("accuracy", acc(b), acc(c), _accuracy_note(drop, c.accuracy_rows)),
    ]
    flagged = worse_rows(report)
    return [(m, x, y, f"{WORSE_MARK} {r}".strip() if m in flagged else r) for m, x, y, r in table]


def _served_rows(report: ComparisonReport) -> list[tuple[str, str, str, str]]:
    """What a client gets, for a package with processing: the embedding output's cosine and
    the post-processed labels' agreement, saying what the rows were made from."""
    served = report.fidelity.served
    if served is None:
        return []
    found = []
    if served.mean_cosine is not None and served.min_cosine is not None:
        cosines = f"{served.mean_cosine:.4f} / {served.min_cosine:.4f}"
        note = f"{served.embedding_output} as served, from {served.source}"
        found.append(("embedding cosine", "1", cosines, note))
    if served.label_agreement is not None:
        note = f"post-processed {served.label_output}, from {served.source}"
        found.append(("label agreement", "1", f"{served.label_agreement:.4f}", note))
    return found


def _accuracy_note(drop: float | None, labelled: int | None) -> str:
    """`drop +0.0012 on 569 rows`: how much, and on how many labelled rows."""
    if labelled is None:
        return "" if drop is None else f"drop {drop:+.4f}"
    return (
        f"{labelled:,} labelled rows" if drop is None else f"drop {drop:+.4f} on {labelled:,} rows"
    )


def worse_rows(report: ComparisonReport) -> set[str]:
    """Metric names (first column of rows()) of the figures that got worse."""
    worse = set(report.worse)
    flagged = {row for row, key in WORSE_KEYS.items() if key in worse}
    if "throughput" in worse:
        flagged.add(f"throughput @{report.candidate.throughput_batch}")
    return flagged


def _change(b: ModelFigures, c: ModelFigures, what: str) -> str:
    old, new = (
        (b.latency_p99_ms, c.latency_p99_ms)
        if what == "p99"
        else (b.session_rss_mb, c.session_rss_mb)
    )
    if old is None or new is None or old <= 0:
        return ""
    return f"{(new - old) / old:+.1%}"


def render(
    report: ComparisonReport,
    *,
    title: str,
    candidates: Sequence[CandidateOutcome] = (),
    decision: str = "",
) -> str:
    flagged = worse_rows(report)
    table = "".join(
        f"<tr{' class=worse' if row[0] in flagged else ''}>"
        + "".join(f"<td>{html.escape(cell)}</td>" for cell in row)
        + "</tr>"
        for row in rows(report)
    )
    head = (
        f"<tr><th>metric</th><th>{html.escape(report.baseline.label)}</th>"
        f"<th>{html.escape(report.candidate.label)}</th><th>ratio</th></tr>"
    )
    m = report.machine
    facts = (
        f"{html.escape(m.cpu)} ({m.logical_cpus} logical CPUs; flags: "
        f"{html.escape(' '.join(m.cpu_flags) or 'none')}); {html.escape(m.int8_note)}. "
        f"ONNX Runtime {m.onnxruntime} on {html.escape(', '.join(m.providers))}, onnx {m.onnx}, "
        f"{html.escape(m.platform)}. Inputs: {html.escape(report.data)}. Speed ratios: median "
        f"and min–max over blocks of interleaved runs; a spread covering 1.0 is not significant."
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    if report.worse:
        parts.append(
            f"<p class='worse'>{WORSE_MARK} than {html.escape(report.baseline.label)}: "
            f"{html.escape(', '.join(report.worse))}</p>"
        )
    if decision:
        parts.append(f"<p>{html.escape(decision)}</p>")
    parts.append(f"<table>{head}{table}</table><p class='note'>{facts}</p>")
    if candidates:
        parts.append(_candidate_table(candidates))
    image = plot(report, candidates)
    if image:
        parts.append(
            f"<img alt='size vs latency and speed ratios' src='data:image/png;base64,{image}'>"
        )
    else:
        parts.append("<p class='note'>Install matplotlib for plots.</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write(
    path: Path,
    report: ComparisonReport,
    *,
    title: str,
    candidates: Sequence[CandidateOutcome] = (),
    decision: str = "",
) -> Path:
    text = render(report, title=title, candidates=candidates, decision=decision)
    path.write_text(text, encoding="utf-8")
    return path


def plot(report: ComparisonReport, candidates: Sequence[CandidateOutcome] = ()) -> str | None:
    """The report's figure as a base64 PNG (None without matplotlib)."""
    fig = figure(report, candidates)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def figure(report: ComparisonReport, candidates: Sequence[CandidateOutcome] = ()) -> Any:
    """Size vs latency (every candidate, axes from 0) and speed ratios with their spread
    against a 1.0 line; titles name the methods. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    b, c = report.baseline, report.candidate
    points = [(b.label, b.file_bytes / 2**20, b.latency_p50_ms, "#1f77b4", "")]
    plotted = [o for o in candidates if o.size_ratio and o.latency_speedup]
    for o in plotted:
        chosen = o.name == c.label
        points.append(
            (
                o.name,
                b.file_bytes / 2**20 / (o.size_ratio or 1.0),
                b.latency_p50_ms / (o.latency_speedup or 1.0),
                "#d62728" if chosen else ("#2ca02c" if o.within_budget else "#999999"),
                "" if o.mean_cosine is None else f"cos {o.mean_cosine:.4f}",
            )
        )
    if not any(name == c.label for name, *_ in points[1:]):
        quality = report.fidelity.mean_cosine if c.accuracy is None else c.accuracy
        kind = "acc" if c.accuracy is not None else "cos"
        points.append(
            (c.label, c.file_bytes / 2**20, c.latency_p50_ms, "#d62728", f"{kind} {quality:.4f}")
        )
    unit, scale = ("MiB", 2**20) if max(b.file_bytes, c.file_bytes) >= 2**20 else ("KiB", 1024)
    markers = "os^DvP*X"
    for index, (name, x, y, colour, note) in enumerate(points):
        kept = index > 0 and name == c.label
        left.scatter(
            [x * 2**20 / scale],
            [y],
            c=[colour],
            s=110 if kept else 60,
            marker=markers[index % len(markers)],
            edgecolors="black" if kept else "none",
            zorder=4 if kept else 3,
            label=f"{name} ({note})" if note else name,
        )
    # Names go in a legend below the axes: points of similar candidates sit on top of each
    # other, and labels next to them overlap one another and the title.
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, ncol=1)
    left.set_xlim(0, max(p[1] for p in points) * 2**20 / scale * 1.15 or 1)
    left.set_ylim(0, max(p[2] for p in points) * 1.2 or 1)  # from 0: µs of noise is no regression
    left.set_xlabel(f"size ({unit})")
    left.set_ylabel("latency p50 at batch 1 (ms)")
    left.grid(alpha=0.3)
    if plotted:
        left.set_title(
            f"size vs latency: {len(plotted)} candidates vs {b.label}\n"
            "red = kept, green = in budget, grey = over budget",
            fontsize=10,
        )
    else:
        left.set_title(f"size vs latency: {c.label} vs {b.label}", fontsize=10)
    if plotted:
        bars = [o for o in plotted if o.throughput_ratio is not None]
        names = [o.name for o in bars]
        values = [o.throughput_ratio or 0.0 for o in bars]
        low = [
            max(v - (v if o.throughput_low is None else o.throughput_low), 0.0)
            for o, v in zip(bars, values, strict=True)
        ]
        high = [
            max((v if o.throughput_high is None else o.throughput_high) - v, 0.0)
            for o, v in zip(bars, values, strict=True)
        ]
        colours = [
            "#d62728" if o.name == c.label else ("#2ca02c" if o.within_budget else "#999999")
            for o in bars
        ]
        right.barh(names, values, xerr=[low, high], color=colours, capsize=3)
        right.set_title(f"throughput vs {b.label} (median, min–max)", fontsize=10)
        right.set_xlabel("× the parent's throughput; grey = over budget")
    else:
        spreads = [None, None, report.latency_spread, report.throughput_spread]
        names = ["size ×smaller", "gzip ×smaller", "p50 speed-up", "throughput ×"]
        values = [
            report.size_ratio,
            report.gzip_ratio,
            report.latency_speedup if spreads[2] is None else spreads[2].median,
            report.throughput_ratio if spreads[3] is None else spreads[3].median,
        ]
        low = [
            0.0 if s is None else max(v - s.low, 0.0) for s, v in zip(spreads, values, strict=True)
        ]
        high = [
            0.0 if s is None else max(s.high - v, 0.0) for s, v in zip(spreads, values, strict=True)
        ]
        right.barh(names, values, xerr=[low, high], color="#1f77b4", capsize=3)
        right.set_title(f"{c.label} vs {b.label}: ratios (median, min–max)", fontsize=10)
        right.set_xlabel("ratio; above 1 = candidate better")
    right.axvline(1.0, color="#333", linewidth=1.2, linestyle="--", label="1.0 = no change")
    right.legend(loc="best", fontsize=8)
    right.set_xlim(
        0, max([*values, *(v + h for v, h in zip(values, high, strict=True))], default=1) * 1.15
    )
    right.invert_yaxis()
    fig.tight_layout()
    return fig


def _candidate_table(candidates: Sequence[CandidateOutcome]) -> str:
    titles = (
        "candidate",
        "within budget",
        "×smaller",
        "throughput × (min–max)",
        "mean cosine",
        "worse than parent",
        "why not",
    )
    head = "<tr>" + "".join(f"<th>{t}</th>" for t in titles) + "</tr>"
    body = ""
    for o in candidates:
        why = o.error or "; ".join(o.reasons)
        body += (
            f"<tr><td>{html.escape(o.name)}</td><td>{'yes' if o.within_budget else 'no'}</td>"
            f"<td>{_num(o.size_ratio)}</td><td>{html.escape(throughput_cell(o))}</td>"
            f"<td>{_num(o.mean_cosine)}</td>"
            f"<td class='worse'>{html.escape(', '.join(o.worse))}</td>"
            f"<td>{html.escape(why)}</td></tr>"
        )
    return f"<h2>Candidates</h2><table>{head}{body}</table>"


def throughput_cell(o: CandidateOutcome) -> str:
    """`1.18 (0.90–1.31, not significant)`, or the bare ratio when no spread was measured."""
    if o.throughput_ratio is None:
        return "—"
    if o.throughput_low is None or o.throughput_high is None:
        return f"{o.throughput_ratio:.3f}"
    verdict = "" if o.speed_significant else ", not significant"
    return f"{o.throughput_ratio:.3f} ({o.throughput_low:.2f}–{o.throughput_high:.2f}{verdict})"


def mib(size: int) -> str:
    return f"{size / 2**20:.2f} MiB" if size >= 2**16 else f"{size / 1024:.1f} KiB"


def ms(value: float) -> str:
    return f"{value:.3g} ms"


def mb(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} MiB"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def plt_close(fig: Any) -> None:
    """Free a figure from figure() (pyplot keeps every open figure alive)."""
    import matplotlib.pyplot as plt

    plt.close(fig)
