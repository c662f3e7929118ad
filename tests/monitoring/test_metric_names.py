"""Every series the dashboard and the alert rules query exists on a live server's /metrics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shipyard.monitoring import MonitoringConfig, alerts, dashboard, metric_names
from shipyard.monitoring.promql import series_family

PROMETHEUS_SYNTHESIZED = {"up"}
"""Series Prometheus itself writes for each target; no exporter serves them."""
DRIFT = "shipyard_drift_psi"
WORKERS_ONLY = {"shipyard_server_worker_restarts_total"}
"""Served only by `serve --workers` (the supervisor's collector); tests/faults/test_workers.py
reads it from a live two-worker scrape."""


def _dashboard_names(board: dict[str, object]) -> dict[str, str]:
    used: dict[str, str] = {}
    for panel in board["panels"]:  # type: ignore[attr-defined]
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                used.setdefault(name, f"panel {panel['title']!r}")
    for var in board["templating"]["list"]:  # type: ignore[index]
        if var["type"] == "query":
            match = re.match(r"label_values\(([A-Za-z_:][A-Za-z0-9_:]*)", var["definition"])
            assert match, var["definition"]
            used.setdefault(match.group(1), f"variable {var['name']}")
    return used


def _defined_in_source(name: str, root: Path) -> bool:
    """The metric is registered somewhere in the server's code (it may have no series until
    something feeds it, e.g. drift gauges until a version with a reference profile runs)."""
    base = name.removesuffix("_total")
    return any(
        f'"{base}"' in path.read_text(encoding="utf-8") for path in (root / "serving").rglob("*.py")
    )


def test_every_queried_series_is_served(scraped: dict[str, str], source_tree: Path) -> None:
    config = MonitoringConfig()
    used = _dashboard_names(dashboard(config))
    for alert in alerts(config):
        for name in metric_names(alert.expr):
            used.setdefault(name, f"alert {alert.name}")
    assert "shipyard_request_duration_seconds_bucket" in used
    assert len(used) >= 15
    families = {k: v for k, v in scraped.items() if v != "sample"}
    missing = []
    for name, where in sorted(used.items()):
        if name in scraped and scraped[name] == "sample":
            continue
        if series_family(name, families) is not None:
            continue  # a family the server declares, with no sample yet (e.g. no 401 so far)
        if name in PROMETHEUS_SYNTHESIZED:
            continue
        if (name == DRIFT or name in WORKERS_ONLY) and _defined_in_source(name, source_tree):
            continue
        missing.append(f"{name} ({where})")
    assert not missing, f"not on /metrics: {missing}"


def test_the_live_scrape_holds_the_traffic(scraped: dict[str, str]) -> None:
    # The fixture's requests really landed: otherwise the check above proves little.
    assert scraped.get("shipyard_requests") == "counter"
    assert scraped.get("shipyard_request_duration_seconds") == "histogram"
    assert scraped.get("shipyard_request_duration_seconds_bucket") == "sample"
    assert scraped.get("process_resident_memory_bytes") == "gauge"  # family = series name


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.99, sum by (le, model) (rate(a_bucket{job="x", le!="1"}[5m])))',
            {"a_bucket"},
        ),
        ("sum without (instance) (b) / on (model) group_left (version) c_total", {"b", "c_total"}),
        ('rate(d{model=~"$model"}[$__rate_interval]) > bool 0.5 and e offset 5m', {"d", "e"}),
        ('label_replace(f, "dst", "$1", "src", "(.*)") unless g', {"f", "g"}),
        ("max(h) > 1e9 or vector(0)", {"h"}),
        ("sum by (a) (i) + max without (b) (j) + count(sum)", {"i", "j", "sum"}),
    ],
)
def test_metric_names_tokenizer(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_suffixes_are_stripped_only_where_the_type_has_them() -> None:
    families = {"lat": "histogram", "req": "counter", "depth": "gauge"}
    assert series_family("lat_bucket", families) == "lat"
    assert series_family("lat_count", families) == "lat"
    assert series_family("req_total", families) == "req"
    assert series_family("depth", families) == "depth"
    assert series_family("req_bucket", families) is None  # a counter has no buckets
    assert series_family("lat", families) is None  # a histogram has no bare series
    assert series_family("depth_total", families) is None
    assert series_family("shipyard_typo_total", families) is None
