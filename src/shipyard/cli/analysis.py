"""`shipyard analyze` and `shipyard bless`: evaluation on labelled data, and its verdict."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from shipyard.cli import output
from shipyard.cli.parsing import Subparsers, add_command

if TYPE_CHECKING:
    from shipyard.analysis.analyze import AnalysisResult


def register(sub: Subparsers) -> None:
    a = add_command(sub, "analyze", cmd_analyze)
    a.add_argument("model", type=Path, help="model folder (latest version) or version folder")
    a.add_argument("--version", type=int, dest="model_version", help="version to evaluate")
    _data_args(a)
    a.add_argument("--config", type=Path, help="eval config (TOML): slices, bootstrap, thresholds")
    a.add_argument("--report", type=Path, help="write a self-contained HTML report here")
    a.add_argument(
        "--json",
        type=Path,
        dest="json_out",
        metavar="FILE",
        help="write the result as JSON here ('-' = stdout)",
    )
    b = add_command(sub, "bless", cmd_bless)
    b.add_argument("version_dir", type=Path, metavar="VERSION_DIR", help="e.g. models/churn/2")
    b.add_argument("--config", type=Path, required=True, help="eval config with [[thresholds]]")
    _data_args(b)
    b.add_argument(
        "--resign",
        type=Path,
        metavar="KEY",
        help="a signed version: re-sign it with this private key after blessing",
    )
    b.add_argument(
        "--remove-signature",
        action="store_true",
        help="a signed version: drop model.sig (sign again afterwards)",
    )
    b.add_argument(
        "--profile",
        action="store_true",
        help="also store these rows as the version's reference profile for drift "
        "(replaces an earlier one)",
    )
    b.add_argument("--report", type=Path, help="also write the HTML report here")
    b.add_argument("--json", action="store_true", help="machine-readable output")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="eval data: .csv, .parquet or .npz")
    p.add_argument("--label", help="label column / array (default: y, label or labels)")
    p.add_argument(
        "--slice",
        action="append",
        default=[],
        dest="slices",
        metavar="COLUMN",
        help="slice by a column or crossed columns (plan×region, plan*region); repeatable",
    )
    p.add_argument("--baseline", type=int, metavar="N", help="compare with version N of the model")
    p.add_argument(
        "--feature",
        action="append",
        dest="features",
        metavar="COLUMN",
        help="feature columns, in order, for a one-matrix-input model; repeatable",
    )


def cmd_analyze(args: argparse.Namespace) -> int:
    """evaluate a version on labelled data: metrics, slices, vs a baseline

    examples:
      shipyard analyze models/churn --data eval.parquet --label churned --slice plan --baseline 1
      shipyard analyze models/churn --data eval.csv --config eval.toml --report report.html
      shipyard analyze models/churn/2 --data eval.npz --json -
    """
    from shipyard.analysis.analyze import analyze
    from shipyard.analysis.report import write_report
    from shipyard.analysis.validate import read_config

    config = read_config(args.config)[0] if args.config else None
    result = analyze(
        args.model,
        version=args.model_version,
        data=args.data,
        label=args.label,
        slices=args.slices,
        baseline=args.baseline,
        config=config,
        features=args.features,
    )
    if args.report:
        write_report(result, args.report)
    if args.json_out is not None:
        text = result.model_dump_json(indent=2)
        if str(args.json_out) == "-":
            output.write(text)
        else:
            args.json_out.write_text(text + "\n", encoding="utf-8")
    if args.json_out is None or str(args.json_out) != "-":
        _print(result)
        if args.report:
            output.say(f"report: {args.report}")
    return 0 if result.validation is None or result.validation.ok else 1


def cmd_bless(args: argparse.Namespace) -> int:
    """analyze + validate a version and record the verdict in its manifest

    examples:
      shipyard bless models/churn/2 --config eval.toml --data eval.parquet --baseline 1
      shipyard bless models/churn/2 --config eval.toml --data eval.parquet --resign keys/signing.pem
      shipyard bless models/churn/2 --config eval.toml --data eval.parquet --profile
    """
    from shipyard.analysis.bless import bless, describe_blessing
    from shipyard.analysis.report import write_report

    done = bless(
        args.version_dir,
        config=args.config,
        data=args.data,
        label=args.label,
        baseline=args.baseline,
        slices=tuple(args.slices),
        resign_key=args.resign,
        remove_signature=args.remove_signature,
        features=args.features,
        profile=args.profile,
    )
    if args.report:
        write_report(done.analysis, args.report)
    if args.json:
        output.print_json(
            {
                "path": str(done.path),
                "signature": done.signature,
                "blessing": done.blessing.model_dump(mode="json"),
            }
        )
    else:
        output.say(f"{done.path}: {describe_blessing(done.blessing)}")
        for line in done.blessing.failures:
            output.say(f"  [red]✗[/] {line}")
        if done.signature != "none":
            output.say(f"signature: {done.signature}")
    return 0 if done.blessing.ok else 1


def _print(r: AnalysisResult) -> None:
    vs = f" vs v{r.baseline_version}" if r.baseline_version else ""
    output.say(
        f"[bold]{r.model}[/] v{r.version}{vs}: {r.task} on {r.data.rows} rows of {r.data.source}"
    )
    table = output.table(
        "metric",
        f"v{r.version}",
        *([f"v{r.baseline_version}", "delta", "interval"] if r.comparison else []),
    )
    deltas = r.comparison.overall.deltas if r.comparison else {}
    for name, value in r.overall.items():
        if "[" in name:
            continue
        row = [name, _f(value)]
        if r.comparison:
            d = deltas.get(name)
            row += (
                ["—", "—", "—"]
                if d is None
                else [
                    _f(d.baseline),
                    f"{d.delta:+.4f}",
                    "—" if d.low is None or d.high is None else f"[{d.low:+.4f}, {d.high:+.4f}]",
                ]
            )
        table.add_row(*row)
    output.show(table)
    if r.slices:
        output.say(f"{len(r.slices)} slice(s) scored, {len(r.skipped)} skipped (too small)")
    if r.validation is not None:
        if r.validation.ok:
            output.say(f"[green]validation passed[/] ({r.validation.checked} check(s))")
        else:
            output.say("[red]validation failed[/]")
            for line in r.validation.summary():
                output.say(f"  [red]✗[/] {line}")


def _f(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"
