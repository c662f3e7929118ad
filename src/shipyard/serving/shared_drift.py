"""Drift under `--workers N`: every live worker's sampled window, summed before it is judged.

Each worker writes its trackers' window counts (per model, version and feature, over the
reference's bins) to `drift-<pid>.json` in the workers' shared metrics folder about once a
second; a scrape adds the other live workers' latest counts to its own and computes PSI,
KS and JS once, on the whole window (`drift.DriftTracker.values`). Counts add because every
worker bins on the same reference edges. Dead workers' windows are left out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from shipyard.serving.drift import DriftTracker

Counts = dict[tuple[str, int], dict[str, np.ndarray]]
"""(model, version) -> feature -> window counts."""


def dump(trackers: dict[tuple[str, int], DriftTracker], folder: Path) -> None:
    """Write this worker's window counts (atomically) for the others to add."""
    rows = [
        {
            "model": name,
            "version": version,
            "features": {f.name: counts.tolist() for f, counts in tracker.snapshot()},
        }
        for (name, version), tracker in trackers.items()
    ]
    target = folder / f"drift-{os.getpid()}.json"
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(json.dumps(rows), encoding="utf-8")
    temporary.replace(target)


def others(folder: Path) -> list[Counts]:
    """The latest window counts of every other live worker."""
    found: list[Counts] = []
    mine = os.getpid()
    for path in sorted(folder.glob("drift-*.json")):
        pid = path.stem.removeprefix("drift-")
        if not pid.isdigit() or int(pid) == mine or not _alive(int(pid)):
            continue
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found.append(
            {
                (r["model"], int(r["version"])): {
                    name: np.asarray(counts, dtype=np.float64)
                    for name, counts in r["features"].items()
                }
                for r in rows
            }
        )
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
