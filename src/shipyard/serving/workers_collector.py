"""Under `--workers N`: the process series of every live worker, read at a scrape.

prometheus_client's multiprocess mode sums counters and histograms from the workers'
files, but process CPU and memory are computed at scrape time from /proc, for one PID; the
supervisor lists every worker's PID (and restart counts) in the metrics folder, and this
collector reports each, labelled `worker`.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from prometheus_client import ProcessCollector

PIDS_FILE = "workers.json"
"""In the metrics folder: the live workers' PIDs and restart counts (the supervisor writes it)."""


class WorkersProcessCollector:
    """process_cpu_seconds_total, process_resident_memory_bytes, ... of every live worker,
    labelled `worker`, and `shipyard_server_worker_restarts_total{worker}` (the supervisor
    lists their PIDs and restart counts in the metrics folder)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, Metric

        try:
            doc = json.loads((self.folder / PIDS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = {"pids": {"": os.getpid()}, "restarts": {}}
        pids, restarts = doc.get("pids", {}), doc.get("restarts", {})
        counter = CounterMetricFamily(
            "shipyard_server_worker_restarts",
            "Times the supervisor started a dead server worker (serve --workers) again.",
            labels=["worker"],
        )
        for worker, count in sorted(restarts.items()):
            counter.add_metric([str(worker)], float(count))
        families: dict[str, Metric] = {counter.name: counter}
        for worker, pid in sorted(pids.items()):
            collector = ProcessCollector(pid=functools.partial(int, pid), registry=None)
            for family in collector.collect():
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    labels = {**sample.labels, "worker": str(worker)}
                    merged.add_sample(sample.name, labels, sample.value)
        return list(families.values())
