"""Reference profiles and drift: `shipyard profile` and `shipyard drift status`."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from shipyard.cli import output
from shipyard.cli.parsing import Subparsers, add_command, add_group
from shipyard.monitoring.drift_status import DEFAULT_PSI_THRESHOLD


def register(sub: Subparsers) -> None:
    p = add_command(sub, "profile", cmd_profile)
    p.add_argument("version_dir", type=Path, metavar="VERSION_DIR", help="version folder")
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        help="reference inputs: .npz keyed by input name, .npy, or .csv/.parquet with a "
        "column per input",
    )
    p.add_argument("--bins", type=int, default=10, help="histogram bins per feature (default 10)")
    p.add_argument("--replace", action="store_true", help="replace an existing profile")
    p.add_argument(
        "--key-file", type=Path, metavar="KEY", help="key-encryption key of an encrypted package"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    _, actions = add_group(
        sub, "drift", "show the drift a server measures against reference profiles"
    )
    s = add_command(actions, "status", cmd_drift_status)
    s.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    s.add_argument("--token", help="API token (a metadata scope) when the server uses --auth")
    s.add_argument(
        "--psi-threshold",
        type=float,
        default=DEFAULT_PSI_THRESHOLD,
        help=f"flag features with PSI at or above this (default {DEFAULT_PSI_THRESHOLD})",
    )
    s.add_argument("--model", help="only this model")
    s.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_profile(args: argparse.Namespace) -> int:
    """add a reference profile (for drift) to an existing version

    examples:
      shipyard profile models/tabular/1 --data train.csv
      shipyard profile models/tabular/2 --data train.parquet --bins 20 --replace
    """
    from shipyard.package.profile_io import add_profile

    kek = None
    if args.key_file is not None:
        from shipyard.security.keys import load_kek

        kek = load_kek(args.key_file)
    version_dir, profile = add_profile(
        args.version_dir, args.data, bins=args.bins, replace=args.replace, kek=kek
    )
    if args.json:
        output.print_json(
            {
                "path": str(version_dir),
                "rows": profile.rows,
                "features": [f.name for f in profile.features],
                "skipped": profile.skipped,
            }
        )
        return 0
    output.write(
        f"profiled {profile.rows} rows into {version_dir}/profile/reference.json: "
        f"{len(profile.features)} feature(s)"
    )
    for tensor, why in sorted(profile.skipped.items()):
        output.write(f"  not profiled: {tensor}: {why}")
    return 0


def cmd_drift_status(args: argparse.Namespace) -> int:
    """per model, version and feature: PSI, KS, JS and the window size

    Reads a server's /metrics and prints every feature's drift; exit 1 when a feature's PSI
    is at or above the threshold.

    examples:
      shipyard drift status --url http://127.0.0.1:8000 --psi-threshold 0.25
      shipyard drift status --model churn --token "$SHIPYARD_TOKEN" --json
    """
    from shipyard.monitoring.drift_status import drift_status

    rows = drift_status(args.url, token=args.token, threshold=args.psi_threshold)
    if args.model:
        rows = [r for r in rows if r.model == args.model]
    drifted = any(r.drifted for r in rows)
    if args.json:
        output.print_json([asdict(r) for r in rows])
        return 1 if drifted else 0
    if not rows:
        output.write(
            "no drift values: serve with --drift (or [drift] enabled = true in model.toml), "
            "add reference profiles (shipyard profile), and send traffic"
        )
        return 0
    table = output.table("model", "version", "feature", "samples", "PSI", "KS", "JS", "")
    for r in rows:
        table.add_row(
            r.model,
            r.version,
            r.feature,
            str(r.samples),
            f"{r.psi:.3f}",
            _num(r.ks),
            _num(r.js),
            "[red]DRIFT[/]" if r.drifted else "ok",
        )
    output.show(table)
    if drifted:
        count = sum(r.drifted for r in rows)
        output.write(f"{count} feature(s) at or above PSI {args.psi_threshold:g}")
    return 1 if drifted else 0


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
