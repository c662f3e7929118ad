"""`shipyard compress` and `shipyard compare`: flags to typed configs, results to tables."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.cli import output
from shipyard.cli.parsing import Subparsers, add_command
from shipyard.errors import UsageError

if TYPE_CHECKING:
    from rich.progress import Progress

    from shipyard.compression.config import AnyConfig, AnyStep, Budget, MeasureConfig
    from shipyard.compression.report import ComparisonReport
    from shipyard.compression.results import CandidateOutcome, CompressResult, ProgressEvent

QUANTIZE_CHOICES = ("int8-dynamic", "int8-static", "fp16", "int4", "auto")
DATA_HELP = (
    ".npz of input tensors (+ y labels); for a package with processing also raw data: "
    "texts (.txt, .jsonl with text/label), a folder of images (class subfolders label "
    "them) or .npz with a text/image array"
)


def register(sub: Subparsers) -> None:
    """`compress` and `compare`."""
    c = add_command(sub, "compress", cmd_compress)
    c.add_argument("model", type=Path, help="model folder (latest version) or version folder")
    c.add_argument("--version", type=int, dest="model_version", help="source version")
    c.add_argument("--quantize", choices=QUANTIZE_CHOICES, help="quantization method")
    c.add_argument("--per-tensor", action="store_true", help="one int8 scale per tensor")
    c.add_argument(
        "--calibration", type=Path, help=f"calibration data for int8-static: {DATA_HELP}"
    )
    c.add_argument(
        "--calibration-method", choices=("minmax", "entropy", "percentile"), default="minmax"
    )
    c.add_argument("--block-size", type=int, default=128, help="int4 block size (default 128)")
    c.add_argument("--prune", type=float, metavar="SPARSITY", help="magnitude-prune weights first")
    c.add_argument("--optimize", choices=("basic", "extended"), help="ONNX Runtime graph level")
    c.add_argument("--auto", action="store_true", help="try candidates, keep the fastest in budget")
    c.add_argument("--target", choices=("cpu", "gpu"), default="cpu", help="for --auto")
    c.add_argument("--eval", type=Path, dest="eval_data", help=f"eval data: {DATA_HELP}")
    c.add_argument(
        "--max-drop",
        type=float,
        help="max accuracy drop (with labels) or mean-cosine drop (without); else rejected",
    )
    c.add_argument("--min-cosine", type=float, help="min mean cosine vs the parent's outputs")
    c.add_argument(
        "--no-budget",
        action="store_true",
        help="publish without any fidelity check (default: top-1 agreement >= 0.99 for class "
        "outputs, else mean cosine >= 0.99, vs the parent)",
    )
    c.add_argument("--repo", type=Path, help="write the new version here (default: same repo)")
    _measure_args(c)
    c = add_command(sub, "compare", cmd_compare)
    c.add_argument("model", type=Path, help="model folder")
    c.add_argument("v1", type=int, help="baseline version")
    c.add_argument("v2", type=int, help="version to compare with it")
    c.add_argument("--eval", type=Path, dest="eval_data", help=f"eval data: {DATA_HELP}")
    _measure_args(c)


def config_from_args(args: argparse.Namespace) -> AnyConfig:
    """The typed config the flags stand for: one step, a pipeline, or the auto search."""
    from shipyard.compression.config import (
        AutoConfig,
        OnnxPruneConfig,
        OptimizeConfig,
        PipelineConfig,
        QuantizeAutoConfig,
    )

    if args.auto:
        if args.quantize or args.optimize:
            raise UsageError("--auto picks the method itself; drop --quantize/--optimize")
        sparsity = args.prune if args.prune is not None else AutoConfig().prune_sparsity
        return AutoConfig(target=args.target, prune_sparsity=sparsity)
    steps: list[AnyStep] = []
    if args.prune is not None:
        steps.append(OnnxPruneConfig(sparsity=args.prune))
    if args.quantize == "auto":
        if steps or args.optimize:
            raise UsageError("--quantize auto cannot be combined with --prune/--optimize")
        return QuantizeAutoConfig()
    if args.quantize:
        steps.append(_quantize_step(args))
    if args.optimize:
        steps.append(OptimizeConfig(level=args.optimize))
    if not steps:
        raise UsageError("say what to do: --quantize METHOD, --prune S, --optimize LEVEL or --auto")
    return steps[0] if len(steps) == 1 else PipelineConfig(steps=tuple(steps))


def budget_from_args(args: argparse.Namespace) -> float | Budget | None:
    from shipyard.compression.config import NO_BUDGET, Budget

    if getattr(args, "no_budget", False):
        if args.max_drop is not None or args.min_cosine is not None:
            raise UsageError("--no-budget cannot be combined with --max-drop/--min-cosine")
        return NO_BUDGET
    if args.min_cosine is None:
        return args.max_drop  # type: ignore[no-any-return]
    return Budget(max_accuracy_drop=args.max_drop, min_mean_cosine=args.min_cosine)


def cmd_compress(args: argparse.Namespace) -> int:
    """quantize, prune or optimize a model; writes a measured new version

    examples:
      shipyard compress models/minilm --quantize int8-dynamic --eval eval.npz
      shipyard compress models/minilm --quantize int8-dynamic --eval sentences.txt
      shipyard compress models/digits --quantize int8-static --calibration images/ --eval test/
      shipyard compress models/iris --auto --eval eval.npz --max-drop 0.01
      shipyard compress models/resnet --quantize int8-static --calibration calib.npz --json
    """
    from shipyard.compression import html
    from shipyard.compression.pipeline import compress

    config = config_from_args(args)
    with _progress_bar() as bar:
        task = bar.add_task("compressing", total=None)

        def update(event: ProgressEvent) -> None:
            label = f"{event.stage} {event.candidate}".strip()
            bar.update(task, total=event.total * 2, completed=_done(event), description=label)

        result = compress(
            args.model,
            config=config,
            repo=args.repo,
            version=args.model_version,
            eval_data=args.eval_data,
            calibration=args.calibration,
            max_drop=budget_from_args(args),
            measure=_measure(args),
            progress=update,
        )
    if args.report:
        title = f"{args.model.name}: {result.candidate}"
        html.write(
            args.report,
            result.report,
            title=title,
            candidates=result.candidates,
            decision=result.decision,
        )
    if args.json:
        output.print_json(_result_json(result))
        return 0 if result.accepted else 1
    output.note(f"budget: {describe_budget(result)}")
    if len(result.candidates) > 1:
        show_candidates(result.candidates, chosen=result.candidate)
    if result.decision:
        output.say(result.decision)
    show_report(result.report)
    for step in result.steps:
        for note in step.notes:
            output.say(f"[dim]note ({step.config.method}): {note}[/]")
    if result.accepted and result.manifest is not None:
        m = result.manifest
        output.say(
            f"[green]wrote[/] {m.name} version {m.version} ({result.candidate}) → {result.path}"
        )
        return 0
    output.note(
        f"[red]rejected[/] {result.candidate}: {'; '.join(result.reasons)}; "
        f"kept for inspection at {result.path} (not a servable version)"
    )
    return 1


def describe_budget(result: CompressResult) -> str:
    """The budget a run checked, saying where it came from (default, given, opted out)."""
    budget = result.budget
    if budget is None or not budget.checked:
        return "none (--no-budget): published without a fidelity or accuracy check"
    if result.default_budget:
        return (
            f"default ({budget.describe()} vs the parent; set one with --max-drop/--min-cosine, "
            "skip it with --no-budget)"
        )
    return budget.describe()


def cmd_compare(args: argparse.Namespace) -> int:
    """measure two versions side by side: size, speed, fidelity, accuracy

    examples:
      shipyard compare models/minilm 1 2 --report report.html
      shipyard compare models/digits 1 2 --eval test_images/
    """
    from shipyard.compression import html
    from shipyard.compression.pipeline import compare

    with output.status(f"measuring versions {args.v1} and {args.v2} side by side…"):
        report = compare(
            args.model, args.v1, args.v2, eval_data=args.eval_data, measure=_measure(args)
        )
    if args.report:
        html.write(args.report, report, title=f"{args.model.name}: v{args.v1} vs v{args.v2}")
    if args.json:
        output.print_json(report.model_dump(mode="json"))
        return 0
    show_report(report)
    return 0


def _quantize_step(args: argparse.Namespace) -> AnyStep:
    from shipyard.compression.config import (
        DynamicInt8Config,
        Fp16Config,
        Int4WeightOnlyConfig,
        StaticInt8Config,
    )

    per_channel = not args.per_tensor
    if args.quantize == "int8-dynamic":
        return DynamicInt8Config(per_channel=per_channel)
    if args.quantize == "int8-static":
        if args.calibration is None:
            raise UsageError(
                "int8-static needs --calibration DATA (inputs like production: calib.npz, or "
                "texts / an image folder for a package with processing)"
            )
        return StaticInt8Config(per_channel=per_channel, calibration_method=args.calibration_method)
    if args.quantize == "int4":
        return Int4WeightOnlyConfig(block_size=args.block_size)
    return Fp16Config()


def _measure_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=32, help="throughput batch (default 32)")
    parser.add_argument("--runs", type=int, default=100, help="timed batch-1 runs (default 100)")
    parser.add_argument("--report", type=Path, help="also write an HTML report with plots")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _measure(args: argparse.Namespace) -> MeasureConfig:
    from shipyard.compression.config import MeasureConfig

    return MeasureConfig(batch_size=args.batch_size, latency_runs=args.runs)


def _progress_bar() -> Progress:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=output.err,
        transient=True,
    )


def _done(event: ProgressEvent) -> int:
    return event.index * 2 + {"compress": 0, "measure": 1, "write": 0}[event.stage]


def show_report(report: ComparisonReport) -> None:
    """The side-by-side table (what `compress` and `compare` print, and `inspect` shows)."""
    from shipyard.compression import html

    table = output.table("metric", report.baseline.label, report.candidate.label, "ratio")
    worse = html.worse_rows(report)
    for row in html.rows(report):
        table.add_row(*row, style="bold red" if row[0] in worse else None)
    output.show(table)
    if report.worse:
        output.say(f"[bold red]worse than {report.baseline.label}:[/] {', '.join(report.worse)}")
    m = report.machine
    output.say(
        f"[dim]{m.cpu}, {m.logical_cpus} CPUs, flags {' '.join(m.cpu_flags) or 'none'}; "
        f"{m.int8_note}; onnxruntime {m.onnxruntime} on {', '.join(m.providers)}; "
        f"inputs: {report.data}[/]"
    )


def show_candidates(candidates: Sequence[CandidateOutcome], *, chosen: str | None = None) -> None:
    """Every candidate `--auto` tried, with why each one was or was not kept."""
    from shipyard.compression import html

    table = output.table(
        "candidate", "in budget", "×smaller", "throughput ×", "mean cosine", "worse", "why not"
    )
    for o in candidates:
        table.add_row(
            ("→ " if o.name == chosen else "") + o.name,
            "yes" if o.within_budget else "no",
            _fmt(o.size_ratio),
            html.throughput_cell(o),
            _fmt(o.mean_cosine),
            ", ".join(o.worse),
            o.error or "; ".join(o.reasons),
        )
    output.show(table)


def _result_json(result: CompressResult) -> dict[str, Any]:
    return {
        "accepted": result.accepted,
        "path": str(result.path),
        "candidate": result.candidate,
        "version": result.manifest.version if result.manifest else None,
        "reasons": result.reasons,
        "budget": result.budget.model_dump(mode="json") if result.budget else None,
        "budget_default": result.default_budget,
        "budget_description": describe_budget(result),
        "steps": [{"op": s.op, "config": s.lineage_config()} for s in result.steps],
        "report": result.report.model_dump(mode="json"),
        "candidates": [o.model_dump(mode="json") for o in result.candidates],
    }


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
