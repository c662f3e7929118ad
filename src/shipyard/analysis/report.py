"""The analysis report: one self-contained HTML file, plots inlined as base64 PNG."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from shipyard.analysis.analyze import AnalysisResult
from shipyard.analysis.compare import MetricDelta

MAX_SLICE_BARS = 30
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1180px;
color:#1d2733;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid
#d5dbe3;padding-bottom:4px}.muted{color:#5c6b7a}.ok{color:#137333;font-weight:600}
.bad{color:#b3261e;font-weight:600}table{border-collapse:collapse;margin:8px 0;font-size:.88em}
th,td{border:1px solid #d5dbe3;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f1f4f8}td.k,th.k{text-align:left}.wrap{overflow-x:auto;max-width:100%}
.plots{display:flex;flex-wrap:wrap;gap:16px}.plots figure{margin:0;flex:0 1 540px}
.plots img{width:100%;height:auto;border:1px solid #e3e7ec}
figcaption{font-size:.85em;color:#5c6b7a}ul.fail li{color:#b3261e}
"""


def write_report(result: AnalysisResult, path: str | Path) -> Path:
    """Write the report for `result` to `path` (one file, nothing fetched when opened)."""
    path = Path(path)
    path.write_text(render(result), encoding="utf-8")
    return path


def render(result: AnalysisResult) -> str:
    parts = [_header(result), _validation(result), _overall(result)]
    if result.comparison is not None:
        parts.append(_deltas(result))
    parts += [_slices(result), _plots(result), _versions(result)]
    body = "\n".join(p for p in parts if p)
    title = html.escape(f"{result.model} v{result.version} — analysis")
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{title}</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def _header(r: AnalysisResult) -> str:
    vs = f" against baseline v{r.baseline_version}" if r.baseline_version else ""
    return (
        f"<h1>{html.escape(r.model)} version {r.version}</h1>"
        f"<p class='muted'>{r.task} on {r.data.rows} rows of {html.escape(r.data.source)} "
        f"(sha256 {r.data.sha256[:16]}…){vs}</p>"
    )


def _validation(r: AnalysisResult) -> str:
    v = r.validation
    if v is None:
        return ""
    if v.ok:
        return f"<h2>Validation</h2><p class='ok'>passed: {v.checked} check(s)</p>"
    items = "".join(f"<li>{html.escape(line)}</li>" for line in v.summary())
    return f"<h2>Validation</h2><p class='bad'>failed</p><ul class='fail'>{items}</ul>"


def _overall(r: AnalysisResult) -> str:
    rows = [(k, _fmt(v), _fmt(r.baseline_overall.get(k))) for k, v in r.overall.items()]
    head = ["metric", f"v{r.version}"] + ([f"v{r.baseline_version}"] if r.baseline_overall else [])
    body = [row if r.baseline_overall else row[:2] for row in rows]
    return "<h2>Overall</h2>" + _table(head, body)


def _deltas(r: AnalysisResult) -> str:
    c = r.comparison
    assert c is not None
    pct = round(c.confidence * 100)
    head = ["slice", "rows", "metric", "candidate", "baseline", "delta", f"{pct}% interval"]
    body: list[tuple[Any, ...]] = []
    for part in [c.overall, *c.slices]:
        shown = {k: d for k, d in part.deltas.items() if d.low is not None}
        if part.flip_rate is not None:
            shown["flip_rate"] = part.flip_rate
        for name, d in shown.items():
            body.append(
                (
                    part.key,
                    part.rows,
                    name,
                    _fmt(d.candidate),
                    _fmt(d.baseline),
                    _signed(d.delta),
                    _interval(d),
                )
            )
    note = (
        f"<p class='muted'>Paired bootstrap: {c.resamples} resamples of the same rows through "
        f"both versions, seed {c.seed}; the flip rate is the share of rows whose predicted "
        "label differs.</p>"
    )
    return f"<h2>Against baseline v{c.baseline_version}</h2>{note}" + _table(head, body)


def _slices(r: AnalysisResult) -> str:
    if not r.slices and not r.skipped:
        return ""
    names = _main_metrics(r)
    head = ["slice", "rows", *names]
    body = [(s.key, s.rows, *(_fmt(s.metrics.get(n)) for n in names)) for s in r.slices]
    text = "<h2>Slices</h2>" + _table(head, body)
    if r.skipped:
        listed = ", ".join(f"{html.escape(k)} ({n} rows)" for k, n in r.skipped.items())
        text += f"<p class='muted'>Skipped, under the minimum slice size: {listed}</p>"
    return text


def _versions(r: AnalysisResult) -> str:
    if not r.versions:
        return ""
    head = [
        "version",
        "parent",
        "steps",
        "model size",
        "latency p50 (ms)",
        "accuracy",
        "from",
        "blessed",
    ]
    body = [
        (
            v.version,
            v.parent or "—",
            ", ".join(v.steps) or "—",
            _size(v.model_bytes),
            _fmt(v.latency_p50_ms),
            _fmt(v.accuracy),
            v.accuracy_source or "—",
            "—" if v.blessed is None else ("yes" if v.blessed else "no"),
        )
        for v in r.versions
    ]
    return "<h2>Versions</h2>" + _table(head, body)


def _plots(r: AnalysisResult) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figures: list[tuple[str, str]] = []
    d = r.details
    if d.confusion:
        fig, ax = plt.subplots(figsize=(5.2, 4.4))
        labels = [str(c) for c in d.classes]
        image = ax.imshow(d.confusion, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        top = max(max(row) for row in d.confusion) or 1
        for i, row in enumerate(d.confusion):
            for j, value in enumerate(row):
                color = "white" if value > top / 2 else "black"
                ax.text(j, i, str(value), ha="center", va="center", color=color, fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("label")
        fig.colorbar(image, ax=ax, fraction=0.046)
        figures.append((_png(fig), "Confusion matrix"))
    if d.calibration:
        fig, ax = plt.subplots(figsize=(5.2, 4.4))
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
        ax.plot(d.calibration["confidence"], d.calibration["accuracy"], "o-", label="model")
        ax.set_xlabel("confidence (top class)")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(loc="upper left")
        ece = r.overall.get("ece")
        figures.append((_png(fig), f"Calibration (ECE {_fmt(ece)})"))
    for curves, title, xl, yl in (
        (d.roc, "ROC", "false positive rate", "true positive rate"),
        (d.pr, "Precision–recall", "recall", "precision"),
    ):
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(5.2, 4.4))
        for curve in curves[:10]:
            ax.plot(curve.x, curve.y, label=f"{curve.name} ({curve.area:.3f})")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.legend(loc="lower right" if title == "ROC" else "lower left", fontsize=8)
        figures.append((_png(fig), title + " (one vs rest)" * (len(curves) > 1)))
    if d.residuals:
        fig, ax = plt.subplots(figsize=(5.2, 4.4))
        ax.hist(d.residuals, bins=40, color="#4c78a8")
        ax.set_xlabel("prediction − label")
        ax.set_ylabel("rows")
        figures.append((_png(fig), "Residuals"))
    main = _main_metrics(r)[:1]
    if r.slices and main:
        name = main[0]
        shown = r.slices[:MAX_SLICE_BARS]
        fig, ax = plt.subplots(figsize=(5.2, max(2.5, 0.32 * len(shown) + 1.2)))
        values = [s.metrics.get(name, math.nan) for s in shown]
        ax.barh(range(len(shown)), values, color="#4c78a8")
        ax.set_yticks(range(len(shown)), [s.key for s in shown], fontsize=8)
        ax.invert_yaxis()
        overall = r.overall.get(name)
        if overall is not None:  # named in the axis label: a legend would cover a bar
            ax.axvline(overall, color="#b3261e", linestyle="--")
        ax.set_xlabel(name if overall is None else f"{name} (dashed: overall {overall:.4f})")
        figures.append((_png(fig), f"{name} per slice"))
    frontier = _frontier(r, plt)
    if frontier is not None:
        figures.append(frontier)
    plt.close("all")
    if not figures:
        return ""
    items = "".join(
        f"<figure><img alt='{html.escape(c)}' src='data:image/png;base64,{b}'>"
        f"<figcaption>{html.escape(c)}</figcaption></figure>"
        for b, c in figures
    )
    return f"<h2>Plots</h2><div class='plots'>{items}</div>"


def _frontier(r: AnalysisResult, plt: Any) -> tuple[str, str] | None:
    """Model size and latency against accuracy, one point per version that has both figures;
    versions no other beats on both axes (the Pareto frontier) joined by a line."""
    measured = [v for v in r.versions if v.accuracy is not None]
    axes_wanted = [
        (title, unit, [(getattr(v, field), v) for v in measured if getattr(v, field) is not None])
        for title, unit, field in (
            ("model size", "MiB", "model_bytes"),
            ("latency p50", "ms", "latency_p50_ms"),
        )
    ]
    shown = [a for a in axes_wanted if len(a[2]) >= 2]
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(5.2 * len(shown), 4.4), squeeze=False)
    for ax, (title, unit, points) in zip(axes[0], shown, strict=True):
        scale = 1.0
        if unit == "MiB":
            big = max(x for x, _ in points) >= 2**20
            unit, scale = ("MiB", 2.0**20) if big else ("KiB", 2.0**10)
        xs = [x / scale for x, _ in points]
        ys = [float(v.accuracy or 0.0) for _, v in points]
        best = [
            i
            for i in range(len(points))
            if not any(
                xs[j] <= xs[i] and ys[j] >= ys[i] and (xs[j], ys[j]) != (xs[i], ys[i])
                for j in range(len(points))
            )
        ]
        ax.scatter(xs, ys, color="#4c78a8", zorder=3)
        line = sorted(best, key=lambda i: xs[i])
        ax.plot([xs[i] for i in line], [ys[i] for i in line], "--", color="#b3261e", zorder=2)
        for (_, v), x, y in zip(points, xs, ys, strict=True):
            ax.annotate(f"v{v.version}", (x, y), textcoords="offset points", xytext=(6, 4))
        ax.set_xlim(0, max(xs) * 1.15)  # from 0: a few µs or bytes must not look like a gap
        low, high = min(ys), max(ys)
        pad = max((high - low) * 0.15, 0.005)
        ax.set_ylim(low - pad, min(1.0, high + pad) if high <= 1.0 else high + pad)
        ax.set_xlabel(f"{title} ({unit})")
        ax.set_ylabel("accuracy")
        ax.set_title(f"accuracy against {title}", fontsize=10)
    return _png(fig), "Versions: size / latency / accuracy (dashed: the frontier)"


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _main_metrics(r: AnalysisResult) -> list[str]:
    wanted = {
        "classification": ["accuracy", "f1_macro", "roc_auc", "log_loss", "flip_rate"],
        "regression": ["mae", "rmse", "r2"],
        "embedding": ["cosine_mean", "cosine_min", "neighbour_agreement"],
    }[r.task]
    return [n for n in wanted if n in r.overall]


def _table(head: list[str], rows: list[tuple[Any, ...]]) -> str:
    th = "".join(
        f"<th class='k'>{html.escape(h)}</th>" if i == 0 else f"<th>{html.escape(h)}</th>"
        for i, h in enumerate(head)
    )
    trs = "".join(
        "<tr>"
        + "".join(
            f"<td class='k'>{html.escape(str(v))}</td>"
            if i == 0
            else f"<td>{html.escape(str(v))}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return (
        f"<div class='wrap'><table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table></div>"
    )


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"


def _signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.4f}"


def _interval(d: MetricDelta) -> str:
    if d.low is None or d.high is None:
        return "—"
    return f"[{d.low:+.4f}, {d.high:+.4f}]"


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)
