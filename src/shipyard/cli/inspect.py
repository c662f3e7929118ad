"""`shipyard inspect`: a version's manifest in words, or a model folder's versions and lineage."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.cli import output
from shipyard.cli.parsing import Subparsers, add_command

if TYPE_CHECKING:
    from shipyard.package.conversion import ConversionCheck
    from shipyard.package.manifest import Manifest


def register(sub: Subparsers) -> None:
    i = add_command(sub, "inspect", cmd_inspect)
    i.add_argument(
        "path",
        type=Path,
        help="model folder (its versions, then the latest in full) or version folder",
    )
    i.add_argument("--version", type=int, dest="model_version")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.add_argument(
        "--pub",
        type=Path,
        metavar="KEY",
        help="also verify the signature (model.sig) with this public key; exit 1 if it fails",
    )
    i.add_argument(
        "--example",
        action="store_true",
        help="print a ready-to-send V2 inference request built from the stored sample "
        "(e.g. shipyard inspect models/iris --example | curl -d @- .../v2/models/iris/infer)",
    )


def cmd_inspect(args: argparse.Namespace) -> int:
    """show a package's manifest: signature, files, hashes, lineage, what compression measured

    A model folder lists its versions with their lineage, then shows the latest in full.

    examples:
      shipyard inspect models/iris
      shipyard inspect models/iris/2 --pub keys/signing.pub
      shipyard inspect models/iris --example
    """
    from shipyard.package.manifest import MANIFEST_NAME
    from shipyard.package.store import read_verified, resolve_version_dir

    version_dir = resolve_version_dir(args.path, args.model_version)
    manifest = read_verified(version_dir)
    checked = _check_signature(version_dir, args.pub)
    if args.example:
        from shipyard.package.warmup import example_request

        body, _origin = example_request(version_dir, manifest)
        output.print_json(body)
        return 0
    if args.json:
        output.print_json(manifest.model_dump(mode="json"))
        return 0
    if args.model_version is None and not (args.path / MANIFEST_NAME).is_file():
        _show_versions(args.path)
        output.say(f"latest version, {version_dir}:")
    _show_version(version_dir, manifest, checked)
    return 0


def _show_versions(model_dir: Path) -> None:
    """Every version of a model folder, one row each: its lineage and what it measured."""
    from shipyard.errors import ShipyardError
    from shipyard.package.manifest import read_manifest
    from shipyard.package.store import list_versions

    versions = list_versions(model_dir)
    table = output.table(
        "version",
        "created",
        "parent",
        "steps",
        "model size",
        "measured vs parent",
        "state",
        title=f"{model_dir.name}: {len(versions)} version(s)",
    )
    for number in versions:
        try:
            m = read_manifest(model_dir / str(number))
        except ShipyardError as exc:
            table.add_row(str(number), "", "", "", "", "", f"unreadable: {exc}")
            continue
        size = sum(e.size for rel, e in m.files.items() if rel.startswith("model.onnx"))
        parent = m.lineage.parent
        table.add_row(
            str(m.version),
            m.created.isoformat(timespec="seconds"),
            "—" if parent is None else str(parent),
            " → ".join(step.op for step in m.lineage.steps) or "—",
            human_size(size),
            _measured_summary(m.measured),
            _state(model_dir / str(number), m),
        )
    output.show(table)
    rejected = model_dir / ".rejected"
    kept = [p for p in rejected.iterdir() if p.is_dir()] if rejected.is_dir() else []
    if kept:
        output.say(
            f"{len(kept)} rejected compression candidate(s) in {rejected} (not servable; "
            "each has a report.json)"
        )


def _measured_summary(measured: dict[str, Any]) -> str:
    """`3.9× smaller, throughput 1.62×, mean cosine 0.9991` from a compressed version's figures."""
    parts = []
    if isinstance(measured.get("size_ratio"), int | float):
        parts.append(f"{measured['size_ratio']:.2f}× smaller")
    if isinstance(measured.get("throughput_ratio"), int | float):
        parts.append(f"throughput {measured['throughput_ratio']:.2f}×")
    fidelity = measured.get("fidelity")
    if isinstance(fidelity, dict) and isinstance(fidelity.get("mean_cosine"), int | float):
        parts.append(f"mean cosine {fidelity['mean_cosine']:.4f}")
    if isinstance(measured.get("accuracy_drop"), int | float):
        parts.append(f"accuracy drop {measured['accuracy_drop']:+.4f}")
    return ", ".join(parts) or "—"


def _state(version_dir: Path, m: Manifest) -> str:
    from shipyard.package.store import SIGNATURE_FILE

    flags = ["signed" if (version_dir / SIGNATURE_FILE).is_file() else "unsigned"]
    if m.encryption is not None:
        flags.append("encrypted")
    if m.blessing is not None:
        flags.append("blessed" if m.blessing.ok else "NOT blessed")
    return ", ".join(flags)


def _show_version(version_dir: Path, m: Manifest, checked: str) -> None:
    from shipyard.analysis.bless import describe_blessing

    output.say(f"[bold]{m.name}[/] version {m.version}  [dim]{version_dir}[/]  {checked}")
    output.say(
        f"source: {m.source.framework} {m.source.framework_version} via "
        f"{m.source.converter} {m.source.converter_version}; opset {m.opset}; "
        f"created {m.created.isoformat(timespec='seconds')}"
    )
    sig = output.table("", "name", "dtype", "shape", title="signature")
    for kind, specs in (("input", m.inputs), ("output", m.outputs)):
        for spec in specs:
            sig.add_row(kind, spec.name, spec.dtype, str(list(spec.shape)))
    output.show(sig)
    files = output.table("file", "size", "sha256", title="files")
    for rel, entry in sorted(m.files.items()):
        files.add_row(rel, human_size(entry.size), entry.sha256[:16] + "…")
    output.show(files)
    lineage = ", ".join(step.op for step in m.lineage.steps) or "none"
    output.say(f"lineage: parent {m.lineage.parent or '—'}; steps: {lineage}")
    for step in m.lineage.steps:
        config = " ".join(f"{k}={_value(v)}" for k, v in step.config.items())
        when = step.at.isoformat(timespec="seconds")
        output.say(f"  {step.op} ({when}): {output.literal(config) or '—'}")
    if m.conversion_check:
        output.say(f"conversion check: {describe_check(m.conversion_check)}")
    _show_measured(m)
    output.say(f"warm-up sample: {_describe_warmup(m)}")
    output.say(f"batching: {_describe_batching(m)}")
    output.say(f"blessing: {describe_blessing(m.blessing)}")
    output.say(f"reference profile: {_describe_profile(m)}")
    if m.external_data:
        output.say(f"external data: {', '.join(m.external_data)} (loaded from the files)")
    if m.metadata:
        output.say("metadata: " + output.literal(json.dumps(m.metadata, default=str)[:400]))


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _show_measured(m: Manifest) -> None:
    """What compression measured against the parent: the table `compress` printed, the budget,
    and for `--auto` every candidate tried and the decision."""
    from pydantic import ValidationError

    from shipyard.cli.compression import show_candidates, show_report
    from shipyard.compression.config import Budget
    from shipyard.compression.report import ComparisonReport
    from shipyard.compression.results import CandidateOutcome

    figures = dict(m.measured)
    if not figures:
        return
    against = figures.pop("compared_to_version", None)
    budget = figures.pop("budget", None)
    candidates = figures.pop("candidates", None)
    decision = figures.pop("decision", None)
    try:
        report = ComparisonReport.from_record(figures)
        limits = Budget.model_validate(budget) if isinstance(budget, dict) else None
        tried = [CandidateOutcome.model_validate(c) for c in candidates or []]
    except ValidationError:
        output.say("measured: " + output.literal(json.dumps(m.measured, default=str)))
        return
    shown = "none (published without a check)" if limits is None else limits.describe()
    output.say(f"measured against version {against} (budget: {shown}):")
    show_report(report)
    if tried:
        show_candidates(tried)
    if isinstance(decision, str) and decision:
        output.say(f"compress --auto: {output.literal(decision)}")


def _check_signature(version_dir: Path, public_key: Path | None) -> str:
    """What inspect checked, in words; SignatureError (exit 1) when `public_key` fails."""
    from shipyard.package.store import SIGNATURE_FILE
    from shipyard.security.signing import verify_version

    if public_key is not None:
        verify_version(version_dir, public_key)
        return f"[green]hashes verified; signature verified (key {public_key})[/]"
    if (version_dir / SIGNATURE_FILE).is_file():
        return (
            "[green]hashes verified[/]; [yellow]signature present but not checked "
            "(pass --pub KEY)[/]"
        )
    return "[green]hashes verified[/]; [yellow]unsigned[/]"


def _describe_warmup(m: Manifest) -> str:
    if m.warmup is None:
        return "none; the server warms up on inputs synthesized from the graph"
    rows = f"{m.warmup.rows} row(s)" if m.warmup.rows else "one call"
    origin = "synthesized at pack time" if m.warmup.synthesized else "given at pack time"
    return f"{m.warmup.file}, {rows}, {origin} (see it with --example)"


def _describe_profile(m: Manifest) -> str:
    if m.profile is None:
        return (
            "none; drift is off for this version (add one: shipyard profile VERSION_DIR --data ...)"
        )
    return (
        f"{m.profile.file}, {m.profile.rows} rows, {m.profile.features} features "
        "(the server measures drift against it with --drift)"
    )


def _describe_batching(m: Manifest) -> str:
    from shipyard.serving.warmup import static_batching_problem

    problem = static_batching_problem(m.inputs, m.outputs)
    if problem is not None:
        return f"off: {problem}"
    return (
        "on where the server confirms at load that rows answer alike alone and joined "
        "(dim 0 is dynamic on every input and output)"
    )


def describe_check(c: ConversionCheck) -> str:
    """The conversion check in words; a package nothing was compared for says so."""
    if not c.compared_outputs:
        return (
            "not compared (no original to compare with; trial run on "
            f"{c.samples} sample rows passed)"
        )
    return (
        f"{c.samples} samples, outputs {c.compared_outputs}, "
        f"max abs diff {c.max_abs_diff:.3g}, label mismatch {c.mismatch:.1%} "
        f"(atol {c.tolerance.atol:g}, rtol {c.tolerance.rtol:g})"
    )


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
