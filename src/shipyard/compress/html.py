"""A self-contained HTML page for a comparison: the table, machine facts and plots.

Plots need matplotlib (embedded as base64 PNG); without it the page has the tables only.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

from shipyard.compress.report import ComparisonReport, ModelFigures
from shipyard.compress.results import CandidateOutcome

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #555; font-size: .9rem; }
"""


def rows(report: ComparisonReport) -> list[tuple[str, str, str, str]]:
    """(metric, baseline, candidate, ratio) rows shared by the CLI table and this page."""
    b, c, f = report.baseline, report.candidate, report.fidelity

    def acc(figures: ModelFigures) -> str:
        return "—" if figures.accuracy is None else f"{figures.accuracy:.4f}"

    drop = report.accuracy_drop
    return [
        ("size", mib(b.file_bytes), mib(c.file_bytes), f"{report.size_ratio:.2f}× smaller"),
        ("gzip size", mib(b.gzip_bytes), mib(c.gzip_bytes), f"{report.gzip_ratio:.2f}× smaller"),
        (
            "latency p50 @1",
            ms(b.latency_p50_ms),
            ms(c.latency_p50_ms),
            f"{report.latency_speedup:.2f}× speed-up",
        ),
        ("latency p99 @1", ms(b.latency_p99_ms), ms(c.latency_p99_ms), ""),
        (
            f"throughput @{c.throughput_batch}",
            f"{b.throughput_rows_per_s:,.0f}/s",
            f"{c.throughput_rows_per_s:,.0f}/s",
            f"{report.throughput_ratio:.2f}×",
        ),
        ("session memory", mb(b.session_rss_mb), mb(c.session_rss_mb), "best effort"),
        ("mean / min cosine", "1", f"{f.mean_cosine:.4f} / {f.min_cosine:.4f}", f"{f.rows} rows"),
        ("max abs diff", "0", f"{f.max_abs_diff:.3g}", ""),
        (
            "top-1 agreement",
            "1",
            "—" if f.top1_agreement is None else f"{f.top1_agreement:.4f}",
            "",
        ),
        ("accuracy", acc(b), acc(c), "" if drop is None else f"drop {drop:+.4f}"),
    ]


def render(
    report: ComparisonReport,
    *,
    title: str,
    candidates: Sequence[CandidateOutcome] = (),
) -> str:
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
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
        f"{html.escape(m.platform)}. Inputs: {html.escape(report.data)}."
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<table>{head}{table}</table><p class='note'>{facts}</p>",
    ]
    if candidates:
        parts.append(_candidate_table(candidates))
    image = plot(report, candidates)
    if image:
        parts.append(f"<img alt='size, latency and fidelity' src='data:image/png;base64,{image}'>")
    else:
        parts.append("<p class='note'>Install matplotlib for plots.</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write(
    path: Path, report: ComparisonReport, *, title: str, candidates: Sequence[CandidateOutcome] = ()
) -> Path:
    path.write_text(render(report, title=title, candidates=candidates), encoding="utf-8")
    return path


def plot(report: ComparisonReport, candidates: Sequence[CandidateOutcome] = ()) -> str | None:
    """Size vs latency (colour = fidelity) and ratio bars, as a base64 PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    b, c = report.baseline, report.candidate
    left.scatter([b.file_bytes / 2**20], [b.latency_p50_ms], c=["#1f77b4"], s=80)
    left.annotate(b.label, (b.file_bytes / 2**20, b.latency_p50_ms))
    quality = report.fidelity.mean_cosine if c.accuracy is None else c.accuracy
    left.scatter([c.file_bytes / 2**20], [c.latency_p50_ms], c=["#d62728"], s=80)
    left.annotate(
        f"{c.label}\n({'acc' if c.accuracy is not None else 'cos'} {quality:.3f})",
        (c.file_bytes / 2**20, c.latency_p50_ms),
    )
    left.set_xlabel("size (MiB)")
    left.set_ylabel("latency p50 at batch 1 (ms)")
    left.set_title("size vs latency")
    if candidates:
        labels = [o.name for o in candidates if o.throughput_ratio is not None]
        values = [o.throughput_ratio or 0.0 for o in candidates if o.throughput_ratio is not None]
        colours = [
            "#2ca02c" if o.within_budget else "#999999"
            for o in candidates
            if o.throughput_ratio is not None
        ]
        right.barh(labels, values, color=colours)
        right.set_xlabel("throughput vs parent (×); grey = over budget")
    else:
        names = ["size ×smaller", "gzip ×smaller", "p50 speed-up", "throughput ×"]
        values = [
            report.size_ratio,
            report.gzip_ratio,
            report.latency_speedup,
            report.throughput_ratio,
        ]
        right.barh(names, values, color="#1f77b4")
        right.axvline(1.0, color="#555", linewidth=1)
        right.set_xlabel("ratio (candidate vs baseline)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _candidate_table(candidates: Sequence[CandidateOutcome]) -> str:
    titles = ("candidate", "within budget", "×smaller", "throughput ×", "mean cosine", "why not")
    head = "<tr>" + "".join(f"<th>{t}</th>" for t in titles) + "</tr>"
    body = ""
    for o in candidates:
        why = o.error or "; ".join(o.reasons)
        body += (
            f"<tr><td>{html.escape(o.name)}</td><td>{'yes' if o.within_budget else 'no'}</td>"
            f"<td>{_num(o.size_ratio)}</td><td>{_num(o.throughput_ratio)}</td>"
            f"<td>{_num(o.mean_cosine)}</td><td>{html.escape(why)}</td></tr>"
        )
    return f"<h2>Candidates</h2><table>{head}{body}</table>"


def mib(size: int) -> str:
    return f"{size / 2**20:.2f} MiB" if size >= 2**16 else f"{size / 1024:.1f} KiB"


def ms(value: float) -> str:
    return f"{value:.3g} ms"


def mb(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} MiB"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
