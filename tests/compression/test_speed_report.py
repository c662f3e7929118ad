"""Speed spreads from interleaved runs, the auto choice they drive, worse-figure flags and the
HTML report's plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shipyard.compression import html
from shipyard.compression.choice import choose
from shipyard.compression.config import NO_BUDGET, DynamicInt8Config, MeasureConfig
from shipyard.compression.machine import machine_facts
from shipyard.compression.pipeline import compare, compress
from shipyard.compression.report import (
    SPREAD_BLOCKS,
    ComparisonReport,
    Fidelity,
    ModelFigures,
    RatioSpread,
)
from shipyard.compression.results import CandidateOutcome


def _figures(label: str, **kw: float) -> ModelFigures:
    base = {
        "file_bytes": 4_000_000,
        "gzip_bytes": 3_600_000,
        "latency_p50_ms": 5.0,
        "latency_p99_ms": 7.28,
        "throughput_rows_per_s": 1000.0,
        "session_rss_mb": 40.0,
    }
    base.update(kw)
    return ModelFigures(
        label=label,
        file_bytes=int(base["file_bytes"]),
        gzip_bytes=int(base["gzip_bytes"]),
        latency_p50_ms=base["latency_p50_ms"],
        latency_p99_ms=base["latency_p99_ms"],
        throughput_batch=32,
        throughput_rows_per_s=base["throughput_rows_per_s"],
        session_rss_mb=base["session_rss_mb"],
        accuracy=None,
    )


def _report(
    name: str,
    ratios: list[float],
    *,
    cosine: float = 0.9999,
    agreement: float = 1.0,
    **candidate: float,
) -> ComparisonReport:
    median = float(np.median(ratios))
    candidate.setdefault("file_bytes", 1_000_000)
    candidate.setdefault("gzip_bytes", 900_000)
    candidate.setdefault("throughput_rows_per_s", 1000.0 * median)
    return ComparisonReport(
        baseline=_figures("v1"),
        candidate=_figures(name, **candidate),
        fidelity=Fidelity(
            rows=64,
            max_abs_diff=1 - cosine,
            mean_cosine=cosine,
            min_cosine=cosine,
            top1_agreement=agreement,
        ),
        data="synthetic",
        machine=machine_facts(),
        settings=MeasureConfig(),
        latency_spread=RatioSpread(ratios=ratios),
        throughput_spread=RatioSpread(ratios=ratios),
    )


def test_spread_comes_from_blocks_of_interleaved_rounds() -> None:
    rng = np.random.default_rng(0)
    # Machine load drifts over the run and hits both models alike (they alternate).
    load = np.repeat([1.0, 1.6, 1.0, 2.0, 1.1, 1.0, 1.5, 1.0], 50)
    base = load * (1 + rng.normal(0, 0.01, load.size))
    faster = load / 1.25 * (1 + rng.normal(0, 0.01, load.size))
    spread = RatioSpread.from_times(base.tolist(), faster.tolist())
    assert len(spread.ratios) == SPREAD_BLOCKS
    assert 1.2 < spread.low <= spread.median <= spread.high < 1.3  # load drift cancels out
    assert spread.significant
    noisy = load * (1 + rng.normal(0, 0.2, load.size))
    same = RatioSpread.from_times(base.tolist(), noisy.tolist())
    assert same.low < 1.0 < same.high
    assert not same.significant
    assert "not significant" in same.describe()
    assert RatioSpread.from_times([1.0, 1.0], [0.5, 0.5]).ratios == [2.0, 2.0]


def test_a_speed_up_inside_the_spread_is_decided_by_fidelity() -> None:
    # The 214-class case: per-tensor 1.8 % "faster" with twice the output error.
    per_tensor = _report("int8 per-tensor", [0.93, 0.99, 1.018, 1.05, 1.09], cosine=0.9980)
    per_channel = _report("int8 per-channel", [0.91, 0.98, 1.0, 1.03, 1.07], cosine=0.9990)
    pick, why = choose([per_tensor, per_channel], ["int8 per-tensor", "int8 per-channel"])
    assert pick == 1
    assert "no candidate is measurably faster" in why and "int8 per-channel" in why


def test_overlapping_spreads_of_faster_candidates_are_decided_by_fidelity() -> None:
    a = _report("a", [1.45, 1.5, 1.55], cosine=0.990)
    b = _report("b", [1.44, 1.48, 1.52], cosine=0.999)
    pick, why = choose([a, b], ["a", "b"])
    assert pick == 1
    assert "overlap" in why


def test_a_clearly_faster_candidate_wins_on_speed() -> None:
    a = _report("a", [1.9, 2.0, 2.1], cosine=0.990)
    b = _report("b", [1.1, 1.2, 1.3], cosine=0.999)
    slower = _report("c", [0.8, 0.85, 0.9], cosine=1.0)
    pick, why = choose([b, a, slower], ["b", "a", "c"])
    assert pick == 1
    assert why.startswith("kept a, the fastest")


def test_every_worse_figure_is_flagged() -> None:
    report = _report(
        "int8 per-tensor",
        [0.97, 0.98, 0.99],
        cosine=0.998,
        agreement=0.97,
        latency_p50_ms=5.5,
        latency_p99_ms=8.32,
        session_rss_mb=59.6,
    )
    assert set(report.worse) >= {
        "latency p50",
        "latency p99",
        "session memory",
        "mean cosine",
        "top-1 agreement",
    }
    assert "size" not in report.worse and "throughput" not in report.worse
    rows = {row[0]: row for row in html.rows(report)}
    assert rows["latency p99 @1"][3] == f"{html.WORSE_MARK} +14.3%"
    assert rows["session memory"][3].startswith(f"{html.WORSE_MARK} +49.0%")
    assert not rows["size"][3].startswith(html.WORSE_MARK)
    page = html.render(report, title="t")
    assert page.count("<tr class=worse>") == len(html.worse_rows(report)) == 5
    bigger = _report("fp32 copy", [1.0, 1.0], file_bytes=5_000_000, throughput_rows_per_s=900.0)
    assert {"size", "throughput"} <= set(bigger.worse)
    assert "latency p99" not in _report("same", [1.0, 1.01]).worse


def _outcome(report: ComparisonReport, within: bool = True) -> CandidateOutcome:
    spread = report.throughput_spread
    assert spread is not None
    return CandidateOutcome(
        name=report.candidate.label,
        within_budget=within,
        reasons=[],
        size_ratio=report.size_ratio,
        throughput_ratio=report.throughput_ratio,
        latency_speedup=report.latency_speedup,
        mean_cosine=report.fidelity.mean_cosine,
        throughput_low=spread.low,
        throughput_high=spread.high,
        speed_significant=spread.significant,
        worse=report.worse,
    )


def test_auto_figure_plots_every_candidate_against_a_one_line() -> None:
    chosen = _report("int8-dynamic (per-channel)", [1.2, 1.3, 1.4])
    others = [
        _report("int8-dynamic (per-tensor)", [1.25, 1.3, 1.35]),
        _report("prune 50% + int8-dynamic (per-channel)", [0.9, 1.1], cosine=0.95),
    ]
    outcomes = [_outcome(chosen), _outcome(others[0]), _outcome(others[1], within=False)]
    fig = html.figure(chosen, outcomes)
    left, right = fig.axes
    assert len(right.patches) == 3  # a bar per candidate, not only the chosen one
    assert [t.get_text() for t in right.get_yticklabels()] == [o.name for o in outcomes]
    assert any(list(line.get_xdata()) == [1.0, 1.0] for line in right.get_lines())
    assert left.get_ylim()[0] == 0 and left.get_xlim()[0] == 0
    assert len(left.collections) == 4  # parent + 3 candidates
    names = [t.get_text() for t in left.get_legend().get_texts()]
    assert all(any(o.name in n for n in names) for o in outcomes)
    assert "v1" in right.get_title() and "3 candidates" in left.get_title()
    html.plt_close(fig)
    page = html.render(chosen, title="mlp: auto", candidates=outcomes, decision="kept x")
    assert "not significant" in page  # the prune candidate's spread covers 1.0
    assert "kept x" in page


def test_compare_figure_names_the_method_and_starts_latency_at_zero(
    mlp_repo: Path, tmp_path: Path
) -> None:
    measure = MeasureConfig(latency_runs=16, throughput_runs=8, min_seconds=0.0, warmup_runs=1)
    compress(mlp_repo / "mlp", config=DynamicInt8Config(), measure=measure, max_drop=NO_BUDGET)
    report = compare(mlp_repo / "mlp", 1, 2, measure=measure)
    assert report.candidate.label == "v2 (int8-dynamic per-channel)"
    assert report.latency_spread is not None and len(report.latency_spread.ratios) == 8
    assert report.throughput_spread is not None and len(report.throughput_spread.ratios) == 8
    fig = html.figure(report)
    left, right = fig.axes
    assert "int8-dynamic per-channel" in left.get_title()
    assert "int8-dynamic per-channel" in right.get_title()
    assert left.get_ylim()[0] == 0
    assert any(list(line.get_xdata()) == [1.0, 1.0] for line in right.get_lines())
    html.plt_close(fig)
    out = html.write(tmp_path / "r.html", report, title="mlp: v1 vs v2")
    assert "data:image/png;base64," in out.read_text(encoding="utf-8")


@pytest.mark.parametrize("ratios", [[0.9, 1.2], [1.01, 1.02]])
def test_spread_significance(ratios: list[float]) -> None:
    assert RatioSpread(ratios=ratios).significant == (min(ratios) > 1.0)
