"""Which in-budget candidate `auto` keeps: a speed-up counts only when it clears the noise.

Each candidate's throughput ratio comes with the min–max over blocks of interleaved rounds
(report.RatioSpread). A candidate is faster only when its whole spread is above 1.0; among
candidates whose spreads overlap the fastest one's, speed does not decide and the better
fidelity (then the smaller file) wins. When none is faster, fidelity and size decide alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from shipyard.compression.report import ComparisonReport, RatioSpread


def throughput_spread(report: ComparisonReport) -> RatioSpread:
    """The report's spread; a report measured before spreads existed counts as one block."""
    return report.throughput_spread or RatioSpread(ratios=[report.throughput_ratio])


def quality(report: ComparisonReport) -> tuple[float, float, float, float]:
    """Higher is better: mean cosine (to 4 decimals), top-1 agreement, ×smaller, -max|diff|."""
    f = report.fidelity
    agreement = 1.0 if f.top1_agreement is None else f.top1_agreement
    return (round(f.mean_cosine, 4), agreement, report.size_ratio, -f.max_abs_diff)


def choose(reports: Sequence[ComparisonReport], names: Sequence[str]) -> tuple[int, str]:
    """(index of the candidate to keep, why) among in-budget candidates."""
    if not reports:
        raise ValueError("choose() needs at least one candidate")
    spreads = [throughput_spread(r) for r in reports]
    faster = [i for i, s in enumerate(spreads) if s.low > 1.0]
    if not faster:
        pick = max(range(len(reports)), key=lambda i: quality(reports[i]))
        return pick, (
            f"kept {names[pick]} for fidelity and size: no candidate is measurably faster than "
            f"the parent (throughput {spreads[pick].describe()}; a spread covering 1.0 is noise)"
        )
    top = max(faster, key=lambda i: spreads[i].median)
    tied = [i for i in faster if spreads[i].high >= spreads[top].low]
    pick = max(tied, key=lambda i: (quality(reports[i]), spreads[i].median))
    if pick == top or len(tied) == 1:
        return top, f"kept {names[top]}, the fastest: throughput {spreads[top].describe()}"
    return pick, (
        f"kept {names[pick]} (throughput {spreads[pick].describe()}) over the nominally faster "
        f"{names[top]} ({spreads[top].describe()}): their spreads overlap, so speed does not "
        "decide and the better fidelity does"
    )
