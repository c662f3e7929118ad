"""`shipyard monitoring export`: a Grafana dashboard and Prometheus alert rules."""

from __future__ import annotations

import argparse
from pathlib import Path

from shipyard.cli import output
from shipyard.cli.parsing import Subparsers, add_command, add_group


def register(sub: Subparsers) -> None:
    from shipyard.monitoring.config import MonitoringConfig

    defaults = MonitoringConfig()
    _, actions = add_group(
        sub, "monitoring", "write a Grafana dashboard and Prometheus alert rules"
    )
    e = add_command(actions, "export", cmd_export)
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
    e.add_argument(
        "--worker-restarts",
        type=int,
        default=defaults.worker_restarts,
        help="worker restarts within 15 minutes that fire the restart alerts "
        f"(default {defaults.worker_restarts})",
    )
    e.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_export(args: argparse.Namespace) -> int:
    """write shipyard-dashboard.json and rules.yml into --out

    The dashboard is imported into Grafana (choose the Prometheus data source); rules.yml
    is added to Prometheus' rule_files.

    examples:
      shipyard monitoring export --out monitoring/ --job shipyard --p99-ms 200
      shipyard monitoring export --out monitoring/ --error-rate 0.05 --drift-psi 0.3 --json
    """
    from shipyard.monitoring.config import MonitoringConfig
    from shipyard.monitoring.export import export

    config = MonitoringConfig(
        job=args.job,
        p99_ms=args.p99_ms,
        error_rate=args.error_rate,
        queue_p99_ms=args.queue_p99_ms,
        drift_psi=args.drift_psi,
        memory_gib=args.memory_gib,
        worker_restarts=args.worker_restarts,
    )
    result = export(args.out, config)
    if args.json:
        output.print_json(
            {
                "dashboard": str(result.dashboard),
                "rules": str(result.rules),
                "panels": result.panels,
                "alerts": result.alerts,
            }
        )
        return 0
    output.write(f"wrote {result.dashboard} ({result.panels} panels)")
    output.write(f"wrote {result.rules} ({result.alerts} alerts)")
    return 0
