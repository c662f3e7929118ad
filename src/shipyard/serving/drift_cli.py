"""CLI for reference profiles and drift: `shipyard profile` and `shipyard drift status`."""

from __future__ import annotations

import argparse
import json
import math
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shipyard.errors import ShipyardError, UsageError

EXAMPLES = {
    "profile": "shipyard profile models/tabular/1 --data train.csv",
    "drift": "shipyard drift status --url http://127.0.0.1:8000 --psi-threshold 0.25",
}
Add = Callable[[Any, str, str], argparse.ArgumentParser]
DEFAULT_PSI_THRESHOLD = 0.25
"""PSI above which a feature is flagged (0.1-0.25: moderate shift, above: significant)."""


class DriftStatusError(ShipyardError):
    """The server's /metrics could not be read."""


@dataclass(frozen=True)
class FeatureDrift:
    model: str
    version: str
    feature: str
    samples: int
    psi: float
    ks: float | None
    js: float | None
    drifted: bool


def add_commands(sub: Any, add: Add) -> None:
    """Register `profile` and `drift` on the main parser's subparsers."""
    p = add(sub, "profile", "add a reference profile (for drift) to an existing version")
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

    d = add(sub, "drift", "show the drift a server measures against reference profiles")
    actions = d.add_subparsers(dest="drift_command", metavar="ACTION", required=True)
    s = actions.add_parser(
        "status",
        help="per model, version and feature: PSI, KS, JS and the window size",
        description="read a server's /metrics and print every feature's drift; exit 1 when "
        "a feature's PSI is at or above the threshold",
        epilog=f"example:\n  {EXAMPLES['drift']}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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


def handlers() -> dict[str, Callable[[argparse.Namespace], int]]:
    return {"profile": cmd_profile, "drift": cmd_drift}


def cmd_profile(args: argparse.Namespace) -> int:
    from shipyard.cli import dump_json
    from shipyard.package.profile_io import add_profile

    kek = None
    if args.key_file is not None:
        from shipyard.security.keys import load_kek

        kek = load_kek(args.key_file)
    version_dir, profile = add_profile(
        args.version_dir, args.data, bins=args.bins, replace=args.replace, kek=kek
    )
    if args.json:
        dump_json(
            {
                "path": str(version_dir),
                "rows": profile.rows,
                "features": [f.name for f in profile.features],
                "skipped": profile.skipped,
            }
        )
        return 0
    print(
        f"profiled {profile.rows} rows into {version_dir}/profile/reference.json: "
        f"{len(profile.features)} feature(s)"
    )
    for tensor, why in sorted(profile.skipped.items()):
        print(f"  not profiled: {tensor}: {why}")
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    rows = drift_status(args.url, token=args.token, threshold=args.psi_threshold)
    if args.model:
        rows = [r for r in rows if r.model == args.model]
    drifted = any(r.drifted for r in rows)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 1 if drifted else 0
    if not rows:
        print(
            "no drift values: serve with --drift (or [drift] enabled = true in model.toml), "
            "add reference profiles (shipyard profile), and send traffic"
        )
        return 0
    table = Table("model", "version", "feature", "samples", "PSI", "KS", "JS", "")
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
    Console().print(table)
    if drifted:
        count = sum(r.drifted for r in rows)
        print(f"{count} feature(s) at or above PSI {args.psi_threshold:g}")
    return 1 if drifted else 0


def drift_status(url: str, *, token: str | None, threshold: float) -> list[FeatureDrift]:
    """Every feature's drift values read from `url`/metrics, sorted."""
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(url.rstrip("/") + "/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        hint = " (pass --token)" if exc.code in (401, 403) else ""
        raise DriftStatusError(f"{url}/metrics: HTTP {exc.code}{hint}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DriftStatusError(f"{url}/metrics: cannot connect ({exc}); is the server up?") from exc
    if threshold <= 0:
        raise UsageError(f"--psi-threshold {threshold}: must be above 0")
    values: dict[tuple[str, str, str], dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("shipyard_drift_"):
            continue
        stat = family.name.removeprefix("shipyard_drift_")
        for sample in family.samples:
            key = (sample.labels["model"], sample.labels["version"], sample.labels["feature"])
            values.setdefault(key, {})[stat] = sample.value
    rows = []
    for (model, version, feature), stats in sorted(values.items()):
        psi = stats.get("psi", math.nan)
        rows.append(
            FeatureDrift(
                model=model,
                version=version,
                feature=feature,
                samples=int(stats.get("samples", 0)),
                psi=psi,
                ks=stats.get("ks"),
                js=stats.get("js"),
                drifted=psi >= threshold,
            )
        )
    return rows


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
