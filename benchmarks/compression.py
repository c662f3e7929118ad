"""Compression methods side by side on a model repository; writes results/compression.md.

    python benchmarks/compression.py                      # the demo repository (built/cached)
    python benchmarks/compression.py models/ --models minilm --batch-size 32

Every method is applied to version 1 of each model and measured against it in the same
run (alternating timed rounds); new versions go to a scratch repository, never to the one
given. Eval data: `<repo>/<name>_eval.npz` (+ `y` labels) and `<repo>/<name>_calibration.npz`
when present; for a model shipping a tokenizer (MiniLM) a built-in set of sentences.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from shipyard.compress import (
    DynamicInt8Config,
    Fp16Config,
    Int4WeightOnlyConfig,
    MeasureConfig,
    OnnxPruneConfig,
    OptimizeConfig,
    PipelineConfig,
    StaticInt8Config,
    compress,
)
from shipyard.compress.config import AnyConfig
from shipyard.compress.data import DataLike
from shipyard.compress.machine import machine_facts
from shipyard.compress.report import ComparisonReport
from shipyard.errors import ShipyardError
from shipyard.package.store import list_versions, resolve_version_dir

RESULTS = Path(__file__).parent / "results" / "compression.md"
DEFAULT_MODELS = ("digits", "minilm")
SENTENCES = (
    "The weather is lovely today, so we are going for a walk in the park.",
    "How do I reset my password if I no longer have access to my email?",
    "The quarterly report shows revenue growth of twelve percent.",
    "A man is playing a guitar on the street corner.",
    "Children are building a sandcastle on the beach.",
    "The new phone has a better camera and a longer battery life.",
    "Please send me the invoice for last month's order.",
    "The train to Berlin was delayed by forty minutes.",
    "She finished the marathon in under four hours.",
    "Our team deployed the model to production on Friday.",
    "What is the best way to learn a new language as an adult?",
    "The restaurant serves fresh pasta and wood-fired pizza.",
    "Researchers discovered a new species of frog in the rainforest.",
    "The stock market fell sharply after the announcement.",
    "I would like to book a table for two at seven o'clock.",
    "The cat is sleeping on the warm windowsill.",
    "Machine learning models need careful evaluation before release.",
    "The museum opens at nine and closes at five on weekdays.",
    "He forgot his umbrella and got soaked in the rain.",
    "The software update fixes several security vulnerabilities.",
    "A group of friends is hiking up the mountain trail.",
    "The recipe calls for two cups of flour and three eggs.",
    "Customer support answered my question within minutes.",
    "The orchestra performed a symphony by Beethoven.",
    "Electric cars are becoming cheaper every year.",
    "The library has extended its opening hours during exams.",
    "My flight was cancelled because of the storm.",
    "The doctor recommended more sleep and regular exercise.",
    "The bridge will be closed for repairs until next month.",
    "A dog is chasing a ball across the green field.",
    "The conference talk explained how transformers process text.",
    "We need to reduce the latency of the search service.",
)


def methods(has_calibration: bool) -> list[tuple[str, AnyConfig]]:
    found: list[tuple[str, AnyConfig]] = [
        ("int8 dynamic, per-tensor", DynamicInt8Config(per_channel=False)),
        ("int8 dynamic (default: per-channel)", DynamicInt8Config()),
        ("int8 dynamic, per-channel, no embeddings", DynamicInt8Config(embeddings=False)),
    ]
    if has_calibration:
        found.append(("int8 static QDQ (MinMax, per-channel)", StaticInt8Config()))
    found += [
        ("int4 weight-only (block 32)", Int4WeightOnlyConfig(block_size=32)),
        ("fp16 (float32 I/O)", Fp16Config()),
        ("prune 50% (unstructured)", OnnxPruneConfig(sparsity=0.5)),
        (
            "prune 50% + int8 dynamic",
            PipelineConfig(steps=(OnnxPruneConfig(sparsity=0.5), DynamicInt8Config())),
        ),
        ("optimize basic (onnxslim + ORT)", OptimizeConfig(level="basic")),
        ("optimize extended (ORT-only file)", OptimizeConfig(level="extended")),
    ]
    return found


def eval_data(repo: Path, name: str) -> tuple[DataLike | None, DataLike | None]:
    eval_file, calib_file = repo / f"{name}_eval.npz", repo / f"{name}_calibration.npz"
    calibration = calib_file if calib_file.is_file() else None
    if eval_file.is_file():
        return eval_file, calibration
    tokenizer = resolve_version_dir(repo / name, 1) / "assets" / "tokenizer.json"
    if tokenizer.is_file():
        from shipyard.demo.text import tokenize

        return tokenize(list(SENTENCES), tokenizer), calibration
    return None, calibration


def run_model(
    repo: Path, name: str, scratch: Path, measure: MeasureConfig
) -> list[tuple[str, ComparisonReport | str]]:
    data, calibration = eval_data(repo, name)
    rows: list[tuple[str, ComparisonReport | str]] = []
    for label, config in methods(calibration is not None):
        started = time.perf_counter()
        try:
            result = compress(
                repo / name,
                version=1,
                config=config,
                repo=scratch,
                eval_data=data,
                calibration=calibration,
                measure=measure,
            )
        except ShipyardError as exc:
            rows.append((label, f"not applicable: {exc}"))
            print(f"  {name}: {label}: {exc}", file=sys.stderr)
            continue
        rows.append((label, result.report))
        print(f"  {name}: {label} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return rows


def markdown(results: dict[str, list[tuple[str, ComparisonReport | str]]], batch: int) -> str:
    facts = machine_facts()
    lines = [
        "# Compression benchmark",
        "",
        f"Generated by `benchmarks/compression.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {facts.cpu}, {facts.logical_cpus} logical CPUs, flags "
        f"{' '.join(facts.cpu_flags)}; {facts.int8_note}. ONNX Runtime {facts.onnxruntime} "
        f"({', '.join(facts.providers)}), onnx {facts.onnx}, {facts.platform}.",
        "",
        "Each method is measured against fp32 version 1 in the same run; ratios are the figures",
        "to compare (the machine is shared, absolute times drift). Fidelity: mean cosine of the",
        "outputs vs fp32, row by row (top-1 agreement for classifiers). Speed-up and",
        "throughput ratios compare against fp32 timed in alternating rounds of the same run.",
        "Batch-1 latency on a busy machine is noisy; the batch throughput ratio is steadier.",
    ]
    for name, rows in results.items():
        base = next((r for _, r in rows if isinstance(r, ComparisonReport)), None)
        lines += ["", f"## {name}", ""]
        if base is not None:
            b = base.baseline
            lines.append(
                f"fp32: {_mib(b.file_bytes)} ({_mib(b.gzip_bytes)} gzip), p50 "
                f"{b.latency_p50_ms:.3g} ms at batch 1, {b.throughput_rows_per_s:,.0f} rows/s at "
                f"batch {b.throughput_batch}"
                + (f", accuracy {b.accuracy:.4f}" if b.accuracy is not None else "")
                + f"; inputs: {_source(base.data)}."
            )
            lines.append("")
        lines += [
            "| method | size | gzip size | ×smaller (gzip) | p50 / p99 @1 (ms) | p50 speed-up "
            f"| throughput ×@{batch} | fidelity | accuracy |",
            "|---|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for label, report in rows:
            if isinstance(report, str):
                lines.append(f"| {label} | — | — | — | — | — | — | {report[:90]} | — |")
                continue
            c, f = report.candidate, report.fidelity
            # Top-1 agreement means something for classifiers only (those with labels here).
            labelled = c.accuracy is not None and f.top1_agreement is not None
            agreement = f", top-1 {f.top1_agreement:.3f}" if labelled else ""
            accuracy = "—" if c.accuracy is None else f"{c.accuracy:.4f}"
            lines.append(
                f"| {label} | {_mib(c.file_bytes)} | {_mib(c.gzip_bytes)} | "
                f"{report.size_ratio:.2f}× ({report.gzip_ratio:.2f}×) | "
                f"{c.latency_p50_ms:.3g} / {c.latency_p99_ms:.3g} | "
                f"{report.latency_speedup:.2f}× | "
                f"{report.throughput_ratio:.2f}× | cos {f.mean_cosine:.4f} (min {f.min_cosine:.4f})"
                f"{agreement} | {accuracy} |"
            )
    lines += ["", *targets(results), ""]
    return "\n".join(lines)


def targets(results: dict[str, list[tuple[str, ComparisonReport | str]]]) -> list[str]:
    for label, report in results.get("minilm", []):
        if label.startswith("int8 dynamic (default") and isinstance(report, ComparisonReport):
            checks = [
                ("≥ 3.5× smaller", report.size_ratio >= 3.5, f"{report.size_ratio:.2f}×"),
                ("≥ 1.5× throughput at batch 32", report.throughput_ratio >= 1.5,
                 f"{report.throughput_ratio:.2f}×"),
                ("mean cosine ≥ 0.99", report.fidelity.mean_cosine >= 0.99,
                 f"{report.fidelity.mean_cosine:.4f}"),
            ]  # fmt: skip
            return ["## MiniLM int8 dynamic targets", ""] + [
                f"- {what}: {got} — {'met' if ok else 'NOT met'}" for what, ok, got in checks
            ]
    return []


def _source(data: str) -> str:
    if data == "eval":
        return f"{len(SENTENCES)} built-in English sentences"
    return Path(data).name if "/" in data else data


def _mib(size: int) -> str:
    return f"{size / 2**20:.2f} MiB" if size >= 2**16 else f"{size / 1024:.1f} KiB"


def demo_repository() -> Path:
    from shipyard.demo import build_demo_repository

    repo = Path(tempfile.gettempdir()) / "shipyard-bench-demo"
    build_demo_repository(repo, only=DEFAULT_MODELS, progress=lambda m: print(m, file=sys.stderr))
    return repo


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", nargs="?", type=Path, help="model repository (default: demo)")
    parser.add_argument("--models", nargs="*", help="model names (default: digits minilm)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=100, help="timed batch-1 runs per model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    repo = args.repo or demo_repository()
    names = args.models or [n for n in DEFAULT_MODELS if list_versions(repo / n)]
    if not names:
        print(f"error: no models found in {repo}; pass --models NAME", file=sys.stderr)
        return 2
    measure = MeasureConfig(batch_size=args.batch_size, latency_runs=args.runs)
    results = {}
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-") as scratch:
        for name in names:
            results[name] = run_model(repo, name, Path(scratch), measure)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(results, args.batch_size), encoding="utf-8")
    print(args.out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
