"""`GET /v2/models/stats` under `--workers N`: every worker's statistics, summed.

Each worker writes its per-version statistics to `stats-<pid>.json` in the workers' shared
metrics folder about once a second (`Metrics.refresh`); a stats call adds the other
workers' latest files to its own live figures. A dead worker's last file stays, so counts
never go back; the other workers' share is at most a second old.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shipyard.serving.metrics import VersionStats

Key = tuple[str, str]


def dump(stats: dict[Key, VersionStats], folder: Path) -> None:
    """Write this process's statistics (atomically) for the other workers to add."""
    rows = [{"model": m, "version": v, **asdict(s)} for (m, v), s in stats.items()]
    target = folder / f"stats-{os.getpid()}.json"
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(json.dumps(rows), encoding="utf-8")
    temporary.replace(target)


def merged(own: dict[Key, VersionStats], folder: Path) -> dict[Key, VersionStats]:
    """This process's live statistics plus every other worker's latest file."""
    from shipyard.serving.metrics import DurationStat, VersionStats

    total: dict[Key, VersionStats] = {k: _copy(v) for k, v in own.items()}
    mine = f"stats-{os.getpid()}.json"
    for path in sorted(folder.glob("stats-*.json")):
        if path.name == mine:
            continue
        try:
            rows: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for row in rows:
            into = total.setdefault((row["model"], row["version"]), VersionStats())
            for name in ("success", "fail", "queue", "compute_infer"):
                getattr(into, name).add(row[name]["ns"], row[name]["count"])
            into.inference_count += row["inference_count"]
            into.execution_count += row["execution_count"]
            into.last_inference_ms = max(into.last_inference_ms, row["last_inference_ms"])
            for size, stat in row["batches"].items():
                into.batches.setdefault(int(size), DurationStat()).add(stat["ns"], stat["count"])
    return total


def _copy(stats: VersionStats) -> VersionStats:
    from shipyard.serving.metrics import DurationStat, VersionStats

    copy = VersionStats(
        success=DurationStat(**asdict(stats.success)),
        fail=DurationStat(**asdict(stats.fail)),
        queue=DurationStat(**asdict(stats.queue)),
        compute_infer=DurationStat(**asdict(stats.compute_infer)),
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        last_inference_ms=stats.last_inference_ms,
    )
    copy.batches = {k: DurationStat(**asdict(v)) for k, v in stats.batches.items()}
    return copy
