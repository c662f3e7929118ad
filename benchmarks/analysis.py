"""`shipyard analyze` at 10k, 100k and 1M rows, and serving with drift on vs off, in one run;
writes results/analysis.md.

    python benchmarks/analysis.py                    # 10k, 100k, 1M rows + drift, ~2 min
    python benchmarks/analysis.py --quick            # 10k rows, 1 drift round; no file written
    python benchmarks/analysis.py --sizes 1000000 --profile /tmp/analyze.prof

The breast-cancer pipeline (StandardScaler + LogisticRegression, as `shipyard demo` builds
it) is packed twice: version 1 strongly regularised (the baseline), version 2 the demo's.
Eval rows are the dataset's 569 rows drawn with replacement, each feature jittered by 10 %
of its standard deviation, written as Parquet with two categorical columns (`plan`: 3
values, `region`: 2) beside the 30 features and the label. `analyze` scores version 2 with
3 slice specs (`plan`, `region` and the numeric `mean radius` cut into 4 quantile bins)
against version 1 with the default paired bootstrap (500 resamples, 95 %): everything from
reading the file to the validated result, timed end to end, sizes one after another.
The drift half serves the same model with drift off and on (10 % sampled) from two
`shipyard serve` processes, driven in interleaved rounds by `benchmarks/drift.py`'s load
generator.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or with -m

from benchmarks import drift as drift_bench
from shipyard.codecs.v2 import encode_request
from shipyard.compression.machine import machine_facts

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "analysis.md"
SIZES = (10_000, 100_000, 1_000_000)
SLICES = ("plan", "region", "mean radius")
NOISE = 0.1
TARGET_S = 60.0
TARGET_ROWS = 1_000_000
TFMA = "TFMA: 9 min for 8,000 rows (issue #13)"


@dataclass(frozen=True)
class Timing:
    rows: int
    seconds: float
    slices: int
    skipped: int
    intervals: int
    accuracy: float
    delta: float
    low: float | None
    high: float | None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def build_model(repo: Path) -> Path:
    """Version 1: C=0.001 (the baseline); version 2: the demo's pipeline (C=1)."""
    from sklearn.base import clone

    import shipyard
    from shipyard.demo.tabular import train_tabular

    trained = train_tabular()
    weak = clone(trained.model).set_params(classify__C=0.001)
    weak.fit(trained.x_train, trained.y_train)
    sample = trained.x_test[:16].astype(np.float32)
    for model in (weak, trained.model):
        shipyard.pack(model, name="tabular", repo=repo, sample_input=sample)
    return repo / "tabular"


def eval_rows(rows: int, seed: int = 0) -> pd.DataFrame:
    """`rows` breast-cancer rows drawn with replacement, jittered, with two slice columns."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(data.data), size=rows)
    x = data.data[pick] + rng.normal(size=(rows, data.data.shape[1])) * (
        NOISE * data.data.std(axis=0)
    )
    frame = pd.DataFrame(x.astype(np.float32), columns=[str(f) for f in data.feature_names])
    frame["y"] = data.target[pick].astype(np.int64)
    frame["plan"] = rng.choice(np.array(["free", "pro", "team"]), size=rows, p=[0.5, 0.3, 0.2])
    frame["region"] = rng.choice(np.array(["eu", "us"]), size=rows)
    return frame


def time_analyze(model: Path, data: Path, rows: int, profile: Path | None) -> Timing:
    from shipyard.analysis import analyze

    profiler = cProfile.Profile() if profile is not None else None
    started = time.perf_counter()
    with profiler or contextlib.nullcontext():
        result = analyze(model, data=data, label="y", slices=list(SLICES), baseline=1)
    seconds = time.perf_counter() - started
    if profiler is not None and profile is not None:
        profiler.dump_stats(str(profile))
    assert result.comparison is not None
    accuracy = result.comparison.overall.deltas["accuracy"]
    intervals = sum(
        d.low is not None
        for c in (result.comparison.overall, *result.comparison.slices)
        for d in c.deltas.values()
    )
    return Timing(
        rows=rows,
        seconds=seconds,
        slices=len(result.slices),
        skipped=len(result.skipped),
        intervals=intervals,
        accuracy=accuracy.candidate,
        delta=accuracy.delta,
        low=accuracy.low,
        high=accuracy.high,
    )


@dataclass(frozen=True)
class Reference:
    rows: int
    index_matrix_s: float
    weights_s: float
    identical: bool


def reference_check(model: Path, data: Path, rows: int) -> Reference:
    """The same analysis with the bootstrap on the [resamples, rows] index matrix (the path
    every metric took before the multiplicity bootstrap, still the fallback) and as it runs
    now: both timed, and the comparisons must be equal to the last digit."""
    from unittest import mock

    from shipyard.analysis import analyze

    def run() -> tuple[float, dict[str, object]]:
        started = time.perf_counter()
        result = analyze(model, data=data, label="y", slices=list(SLICES), baseline=1)
        assert result.comparison is not None
        return time.perf_counter() - started, result.comparison.model_dump()

    with mock.patch("shipyard.analysis.compare.weighted_samples", return_value={}):
        old_s, old = run()
    new_s, new = run()
    return Reference(rows=rows, index_matrix_s=old_s, weights_s=new_s, identical=old == new)


def serve_drift(work: Path, args: argparse.Namespace) -> list[drift_bench.Config]:
    """Drift off vs on (10 %) from two servers at once, interleaved rounds (drift.py's code)."""
    configs = [
        drift_bench.Config("drift off", ""),
        drift_bench.Config("drift on, 10 % sampled", "", flags=["--drift"]),
    ]
    version_dir, row = drift_bench.build(work)
    body = work / "request.json"
    body.write_bytes(encode_request({"X": row})[0])
    with contextlib.ExitStack() as stack:
        ports = [
            stack.enter_context(
                drift_bench.serving(drift_bench.repo_for(version_dir, c, work), c, work)
            )
            for c in configs
        ]
        for round_no in range(args.rounds):
            for config, port in zip(configs, ports, strict=True):
                cell = drift_bench.load(port, body, args)
                config.rounds.append(cell)
                print(
                    f"drift round {round_no + 1} {config.label}: {cell['rps']:.0f} req/s, "
                    f"p99 {cell['p99_ms']:.2f} ms",
                    flush=True,
                )
    return configs


def markdown(
    timings: Sequence[Timing],
    reference: Reference | None,
    served: Sequence[drift_bench.Config],
    args: argparse.Namespace,
) -> str:
    facts = machine_facts()
    load = f"{args.load_at_start} at the start, " + "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    lines = [
        "# Model analysis at scale, and drift on the request path",
        "",
        f"Run {datetime.now(UTC).isoformat(timespec='seconds')} with `python "
        f"benchmarks/analysis.py{' ' + ' '.join(args.argv) if args.argv else ''}`; "
        f"{facts.cpu}, {facts.logical_cpus} logical CPUs, Python {facts.python}, ONNX Runtime "
        f"{facts.onnxruntime}; load average {load} at the end.",
        "",
        "## `analyze`",
        "",
        "Breast-cancer StandardScaler + LogisticRegression, version 2 against version 1, "
        "Parquet rows (the dataset resampled with 10 % jitter), 3 slice specs (`plan` × 3, "
        "`region` × 2, `mean radius` in 4 quantile bins: 9 slices), paired bootstrap with "
        "500 resamples for accuracy, F1 macro, ROC-AUC and the flip rate, overall and per "
        "slice. Wall time of `shipyard.analysis.analyze(...)`, reading the file included.",
        "",
        "| rows | seconds | rows/s | slices | intervals | accuracy v2 | Δ vs v1 [95 % CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in timings:
        ci = "—" if t.low is None or t.high is None else f"[{t.low:+.4f}, {t.high:+.4f}]"
        lines.append(
            f"| {t.rows:,} | {t.seconds:.1f} | {t.rows_per_s:,.0f} | {t.slices} | "
            f"{t.intervals} | {t.accuracy:.4f} | {t.delta:+.4f} {ci} |"
        )
    big = next((t for t in timings if t.rows == TARGET_ROWS), None)
    if big is not None:
        verdict = "met" if big.seconds < TARGET_S else "missed"
        lines += [
            "",
            f"Target: {TARGET_ROWS:,} rows with 3 slices and intervals in under "
            f"{TARGET_S:.0f} s: {verdict} ({big.seconds:.1f} s, {big.seconds / TARGET_S:.2f}× "
            f"the budget). For scale, {TFMA}: {8000 / 540:.0f} rows/s against "
            f"{big.rows_per_s:,.0f} here.",
        ]
    if reference is not None:
        same = "equal to the last digit" if reference.identical else "DIFFERENT"
        lines += [
            "",
            f"The bootstrap as it ran before (every metric from the [resamples, rows] index "
            f"matrix, still the fallback for other metrics), same run, {reference.rows:,} rows: "
            f"{reference.index_matrix_s:.1f} s against {reference.weights_s:.1f} s now "
            f"({reference.index_matrix_s / reference.weights_s:.1f}× faster); the two "
            f"comparisons (every delta and interval) are {same}.",
        ]
    if served:
        off = served[0].rps
        lines += [
            "",
            "## Serving with drift on vs off",
            "",
            f"The same model (packed with a reference profile), batch-1 V2 JSON requests, "
            f"{args.concurrency} keep-alive connections, {len(served[0].rounds)} interleaved "
            f"rounds of {args.duration:g} s per config (median shown), one instance, one ONNX "
            "Runtime thread; each config its own `shipyard serve` process. Longer runs and "
            "the hook's own cost: [drift.md](drift.md).",
            "",
            "| config | req/s (median) | rounds | p99 ms (median) | vs off |",
            "|---|---|---|---|---|",
        ]
        for c in served:
            rounds = ", ".join(f"{r['rps']:.0f}" for r in c.rounds)
            p99 = float(np.median([r["p99_ms"] for r in c.rounds]))
            lines.append(f"| {c.label} | {c.rps:.0f} | {rounds} | {p99:.2f} | {c.rps / off:.3f}× |")
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="row counts, comma-separated"
    )
    parser.add_argument("--profile", type=Path, help="cProfile the largest size into this file")
    parser.add_argument("--rounds", type=int, default=5, help="drift rounds per config")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--skip-drift", action="store_true")
    parser.add_argument(
        "--reference-rows",
        type=int,
        default=10_000,
        help="rows for the before/after bootstrap check (0: skip)",
    )
    parser.add_argument("--quick", action="store_true", help="10k rows, 1 drift round; no file")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s]
    if args.quick:
        args.sizes, args.rounds, args.duration, args.warmup = [10_000], 1, 2.0, 0.5
        args.reference_rows = 2_000
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.load_at_start = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    started = time.perf_counter()
    timings: list[Timing] = []
    served: list[drift_bench.Config] = []
    with tempfile.TemporaryDirectory(prefix="shipyard-analysis-bench-") as tmp:
        work = Path(tmp)
        model = build_model(work / "models")
        for rows in args.sizes:
            data = work / f"eval-{rows}.parquet"
            eval_rows(rows).to_parquet(data, index=False)
            profile = args.profile if rows == max(args.sizes) else None
            t = time_analyze(model, data, rows, profile)
            timings.append(t)
            print(
                f"analyze {rows:,} rows: {t.seconds:.1f} s, {t.rows_per_s:,.0f} rows/s "
                f"({t.slices} slices, {t.intervals} intervals)",
                flush=True,
            )
            data.unlink()
        reference = None
        if args.reference_rows:
            data = work / "reference.parquet"
            eval_rows(args.reference_rows, seed=1).to_parquet(data, index=False)
            reference = reference_check(model, data, args.reference_rows)
            print(
                f"index-matrix bootstrap {reference.index_matrix_s:.1f} s, multiplicities "
                f"{reference.weights_s:.1f} s at {reference.rows:,} rows; identical: "
                f"{reference.identical}",
                flush=True,
            )
        if not args.skip_drift:
            served = serve_drift(work, args)
            off = served[0].rps
            for c in served[1:]:
                print(f"{c.label}: {c.rps / off:.3f}× the throughput of drift off")
    big = next((t for t in timings if t.rows == TARGET_ROWS), None)
    if big is not None:
        print(f"1M rows: {big.seconds:.1f} s = {big.seconds / TARGET_S:.2f}× the {TARGET_S:.0f} s")
    print(f"took {time.perf_counter() - started:.0f} s")
    if not args.quick:
        args.output.parent.mkdir(exist_ok=True)
        args.output.write_text(markdown(timings, reference, served, args), encoding="utf-8")
        print(f"wrote {args.output}")
    if reference is not None and not reference.identical:
        return 1
    return 0 if big is None or big.seconds < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
