"""CLI glue for `shipyard monitoring export`; the only printing in monitoring/."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shipyard.monitoring.config import MonitoringConfig
from shipyard.monitoring.export import export

EXAMPLES = {
    "monitoring": "shipyard monitoring export --out monitoring/ --job shipyard --p99-ms 200",
}
Add = Callable[[Any, str, str], argparse.ArgumentParser]


def add_commands(sub: Any, add: Add) -> None:
    """Register `monitoring export` on the main parser's subparsers."""
    defaults = MonitoringConfig()
    m = add(sub, "monitoring", "write a Grafana dashboard and Prometheus alert rules")
    actions = m.add_subparsers(dest="monitoring_command", metavar="ACTION", required=True)
    e = actions.add_parser(
        "export",
        help="write shipyard-dashboard.json and rules.yml into --out",
        description="write shipyard-dashboard.json (import into Grafana, choose the Prometheus "
        "data source) and rules.yml (add to Prometheus' rule_files)",
        epilog=f"example:\n  {EXAMPLES['monitoring']}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--out", type=Path, required=True, help="folder to write into")
    e.add_argument(
        "--job", default=defaults.job, help=f"Prometheus job label (default {defaults.job})"
    )
    e.add_argument("--p99-ms", type=float, default=defaults.p99_ms, help="p99 latency alert (ms)")
    e.add_argument(
        "--error-rate",
        type=float,
        default=defaults.error_rate,
        help=f"error share alert, 0-1 (default {defaults.error_rate:g})",
    )
    e.add_argument(
        "--queue-p99-ms",
        type=float,
        default=defaults.queue_p99_ms,
        help=f"p99 queue wait alert (ms, default {defaults.queue_p99_ms:g})",
    )
    e.add_argument(
        "--drift-psi",
        type=float,
        default=defaults.drift_psi,
        help=f"drift alert PSI (default {defaults.drift_psi:g})",
    )
    e.add_argument(
        "--memory-gib",
        type=float,
        default=defaults.memory_gib,
        help=f"process memory alert (GiB, default {defaults.memory_gib:g})",
    )
    e.add_argument("--json", action="store_true", help="machine-readable output")


def handlers() -> dict[str, Callable[[argparse.Namespace], int]]:
    return {"monitoring": cmd_monitoring}


def cmd_monitoring(args: argparse.Namespace) -> int:
    config = MonitoringConfig(
        job=args.job,
        p99_ms=args.p99_ms,
        error_rate=args.error_rate,
        queue_p99_ms=args.queue_p99_ms,
        drift_psi=args.drift_psi,
        memory_gib=args.memory_gib,
    )
    result = export(args.out, config)
    if args.json:
        print(
            json.dumps(
                {
                    "dashboard": str(result.dashboard),
                    "rules": str(result.rules),
                    "panels": result.panels,
                    "alerts": result.alerts,
                },
                indent=2,
                sort_keys=True,
            )
        )
        return 0
    print(f"wrote {result.dashboard} ({result.panels} panels)")
    print(f"wrote {result.rules} ({result.alerts} alerts)")
    return 0
