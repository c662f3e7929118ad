"""CLI command handlers for packaging: pack, scan, inspect, predict."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from shipyard.cli import dump_json

if TYPE_CHECKING:
    from shipyard.package.conversion import ConversionCheck
    from shipyard.package.manifest import Manifest

out = Console()
err = Console(stderr=True)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def cmd_pack(args: argparse.Namespace) -> int:
    import shipyard
    from shipyard.package.conversion import Tolerance
    from shipyard.processing.cli import plan_from_args

    tolerance = Tolerance(atol=args.atol, rtol=args.rtol, max_mismatch=args.max_mismatch)
    with err.status(f"converting {args.model} and checking it against the original…"):
        result = shipyard.pack(
            args.model,
            name=args.name,
            repo=args.repo,
            version=args.model_version,
            sample_input=args.sample_input,
            keep_sample=not args.no_sample,
            reference_data=args.reference_data,
            processing=plan_from_args(args),
            opset=args.opset,
            tolerance=tolerance,
            trust_pickle=args.trust_pickle,
            allow_globals=args.allow_global,
        )
    if args.json:
        dump_json({"path": str(result.path), "manifest": result.manifest.model_dump(mode="json")})
        return 0
    m = result.manifest
    check = m.conversion_check
    if check is None:
        diff = "not checked"
    elif check.compared_outputs:
        diff = f"max abs diff {check.max_abs_diff:.3g}"
    else:
        diff = "not compared: no original, trial run passed"
    out.print(
        f"[green]packed[/] {m.name} version {m.version} → {result.path}  "
        f"({m.source.framework} {m.source.framework_version}, opset {m.opset}, {diff})"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from shipyard.api import import_version

    result = import_version(
        args.package, repo=args.repo, name=args.name, version=args.model_version
    )
    m = result.manifest
    if args.json:
        dump_json(
            {
                "path": str(result.path),
                "source": str(result.source),
                "resign_needed": result.signature_dropped,
                "next_steps": list(result.next_steps),
                "manifest": m.model_dump(mode="json"),
            }
        )
        return 0
    out.print(f"[green]imported[/] {result.source} → {m.name} version {m.version} at {result.path}")
    for step in result.next_steps:
        err.print(f"[yellow]note:[/] {step}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from shipyard.safepickle.scan import scan_file

    report = scan_file(args.file, extra_allowed=args.allow_global)
    if args.json:
        dump_json(
            {
                "path": report.path,
                "format": report.format,
                "safe": report.safe,
                "pickles": report.pickles,
                "globals": list(report.globals),
                "findings": [
                    {
                        "position": f.position,
                        "opcode": f.opcode,
                        "global": f.global_name,
                        "reason": f.reason,
                        "member": f.member,
                    }
                    for f in report.findings
                ],
            }
        )
        return 0 if report.safe else 1
    verdict = "[green]clean[/]" if report.safe else "[red]UNSAFE[/]"
    out.print(
        f"{report.path}: {verdict} — format {report.format}, {report.pickles} pickle(s), "
        f"{len(report.globals)} distinct global(s)"
    )
    if report.findings:
        table = Table("position", "member", "opcode", "global", "reason")
        for f in report.findings:
            table.add_row(str(f.position), f.member or "", f.opcode, f.global_name or "", f.reason)
        out.print(table)
    return 0 if report.safe else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    from shipyard.package.store import read_verified, resolve_version_dir

    version_dir = resolve_version_dir(args.path, args.model_version)
    manifest = read_verified(version_dir)
    checked = _check_signature(version_dir, args.pub)
    if args.example:
        from shipyard.package.warmup import example_request

        body, _origin = example_request(version_dir, manifest)
        dump_json(body)
        return 0
    if args.json:
        dump_json(manifest.model_dump(mode="json"))
        return 0
    m = manifest
    out.print(
        f"[bold]{m.name}[/] version {m.version}  [dim]{version_dir}[/]  {checked}", soft_wrap=True
    )
    out.print(
        f"source: {m.source.framework} {m.source.framework_version} via "
        f"{m.source.converter} {m.source.converter_version}; opset {m.opset}; "
        f"created {m.created.isoformat(timespec='seconds')}"
    )
    sig = Table("", "name", "dtype", "shape", title="signature")
    for kind, specs in (("input", m.inputs), ("output", m.outputs)):
        for spec in specs:
            sig.add_row(kind, spec.name, spec.dtype, str(list(spec.shape)))
    out.print(sig)
    files = Table("file", "size", "sha256", title="files")
    for rel, entry in sorted(m.files.items()):
        files.add_row(rel, _human(entry.size), entry.sha256[:16] + "…")
    out.print(files)
    lineage = ", ".join(step.op for step in m.lineage.steps) or "none"
    out.print(f"lineage: parent {m.lineage.parent or '—'}; steps: {lineage}")
    if m.conversion_check:
        out.print(f"conversion check: {describe_check(m.conversion_check)}")
    out.print(f"warm-up sample: {_describe_warmup(m)}")
    out.print(f"batching: {_describe_batching(m)}")
    from shipyard.analysis.bless import describe_blessing

    out.print(f"blessing: {describe_blessing(m.blessing)}", soft_wrap=True)
    out.print(f"reference profile: {_describe_profile(m)}", soft_wrap=True)
    if isinstance(m.measured.get("decision"), str) and m.measured["decision"]:
        out.print(f"compress --auto: {m.measured['decision']}", soft_wrap=True)
    if m.external_data:
        out.print(f"external data: {', '.join(m.external_data)} (loaded from the files)")
    if m.metadata:
        out.print("metadata: " + json.dumps(m.metadata, default=str)[:400])
    return 0


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


def cmd_predict(args: argparse.Namespace) -> int:
    import shipyard
    from shipyard.predict import predict_json

    raw = sys.stdin.buffer.read() if str(args.input) == "-" else _read(args.input)
    kek = None
    if args.key_file is not None:
        from shipyard.security.keys import load_kek

        kek = load_kek(args.key_file)
    model = shipyard.load(args.path, version=args.model_version, public_key=args.pub, kek=kek)
    try:
        response: dict[str, Any] = predict_json(model, raw)
    finally:
        model.close()
    dump_json(response)
    return 0


def _read(path: Any) -> bytes:
    from shipyard.errors import UsageError

    try:
        data: bytes = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read request file ({exc.strerror})") from exc
    return data
