"""The Grafana dashboard for a fleet of `shipyard serve` processes, built as plain JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shipyard.monitoring.config import MonitoringConfig

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
WIDTH = 24
RATE = "[$__rate_interval]"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str
    format: str = "time_series"


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[Target, ...]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    description: str = ""


def panels(config: MonitoringConfig) -> list[tuple[str, list[Panel]]]:
    """(row title, panels) in the order they appear; every query is filtered by job and the
    dashboard's model and version variables."""
    mv = {"model": "=~$model", "version": "=~$version"}
    req = "shipyard_requests_total" + config.selector(**mv)
    bad = "shipyard_requests_total" + config.selector(
        **mv, outcome="=~error|overloaded|not_ready|timeout"
    )
    job = config.selector()

    def quantiles(metric: str, by: str = "model") -> tuple[Target, ...]:
        sel = config.selector(**mv)
        return tuple(
            Target(
                f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{sel}{RATE})))",
                f"p{round(q * 100)} {{{{{by}}}}}",
            )
            for q in (0.5, 0.99)
        )

    traffic = [
        Panel(
            "Request rate by model and outcome",
            (Target(f"sum by (model, outcome) (rate({req}{RATE}))", "{{model}} {{outcome}}"),),
            unit="reqps",
        ),
        Panel(
            "Error rate (error, overloaded, not_ready)",
            (
                Target(
                    f"sum by (model) (rate({bad}{RATE})) / sum by (model) (rate({req}{RATE}))",
                    "{{model}}",
                ),
            ),
            unit="percentunit",
            description="Share of requests the server failed; `invalid` (the client's fault, "
            "400) is not counted.",
        ),
        Panel(
            "Request latency p50 / p99",
            quantiles("shipyard_request_duration_seconds"),
            unit="s",
            description="Received → response ready, from shipyard_request_duration_seconds.",
        ),
        Panel(
            "Queue time p50 / p99",
            quantiles("shipyard_queue_duration_seconds"),
            unit="s",
            width=8,
        ),
        Panel(
            "Compute time p50 / p99",
            quantiles("shipyard_compute_duration_seconds"),
            unit="s",
            width=8,
        ),
        Panel(
            "Queue depth",
            (
                Target(
                    "sum by (model, version) (shipyard_queue_depth" + config.selector(**mv) + ")",
                    "{{model}} v{{version}}",
                ),
            ),
            width=8,
        ),
        Panel(
            "Batch size distribution",
            (
                Target(
                    "sum by (le) (increase(shipyard_batch_size_bucket"
                    + config.selector(**mv)
                    + f"{RATE}))",
                    "{{le}}",
                    format="heatmap",
                ),
            ),
            kind="heatmap",
            width=WIDTH,
            description="Rows per executed batch; mostly 1 means batching is not combining "
            "requests (raise max_latency_us or send more concurrently).",
        ),
    ]
    models = [
        Panel(
            "Model versions loaded",
            (Target(f"sum(shipyard_models_loaded{job})", "loaded"),),
            kind="stat",
            width=6,
        ),
        Panel(
            "Load failures (1h)",
            (
                Target(
                    "sum by (model) (increase(shipyard_model_load_failures_total"
                    + config.selector(model="=~$model")
                    + "[1h]))",
                    "{{model}}",
                ),
            ),
            width=9,
        ),
        Panel(
            "Requests to unavailable versions",
            (
                Target(
                    "sum by (model, version) (rate(shipyard_requests_total"
                    + config.selector(**mv, outcome="not_ready")
                    + f"{RATE}))",
                    "{{model}} v{{version}}",
                ),
            ),
            unit="reqps",
            width=9,
            description="Answered 503 not_ready: the version is loading, failed, or unloaded.",
        ),
    ]
    security = [
        Panel(
            "Auth failures by reason",
            (
                Target(
                    f"sum by (reason, protocol) (rate(shipyard_auth_failures_total{job}{RATE}))",
                    "{{reason}} ({{protocol}})",
                ),
                Target(
                    f"sum by (kind) (rate(shipyard_not_found_total{job}{RATE}))",
                    "404 {{kind}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Audit log health",
            (
                Target(f"min(shipyard_audit_healthy{job})", "healthy (1 = ok)"),
                Target(
                    f"sum(increase(shipyard_audit_write_failures_total{job}{RATE}))",
                    "write failures",
                ),
                Target(f"sum(shipyard_audit_pending_records{job})", "pending records"),
            ),
        ),
    ]
    process = [
        Panel(
            "Resident memory per process",
            (Target(f"process_resident_memory_bytes{job}", "{{instance}} {{worker}}"),),
            unit="bytes",
        ),
        Panel(
            "CPU per process",
            (Target(f"rate(process_cpu_seconds_total{job}{RATE})", "{{instance}} {{worker}}"),),
            unit="percentunit",
        ),
        Panel(
            "Worker restarts (1h)",
            (
                Target(
                    "sum by (model, version, reason) (increase(shipyard_worker_restarts_total"
                    + config.selector(**mv)
                    + "[1h]))",
                    "{{model}} v{{version}} model worker ({{reason}})",
                ),
                Target(
                    "sum by (worker) (increase(shipyard_server_worker_restarts_total"
                    + job
                    + "[1h]))",
                    "server worker {{worker}}",
                ),
            ),
            width=WIDTH,
            description='Isolated model workers (isolation = "process") started again after a '
            "crash, an execution timeout or a failed start, and server workers (serve "
            "--workers) the supervisor started again.",
        ),
    ]
    drift = [
        Panel(
            "Drift (PSI) per feature",
            (
                Target(
                    "max by (model, version, feature) (shipyard_drift_psi"
                    + config.selector(**mv)
                    + ")",
                    "{{model}} v{{version}} {{feature}}",
                ),
            ),
            width=WIDTH,
            description=f"Population stability index against the version's reference "
            f"profile; above {config.drift_psi:g} the alert fires.",
        ),
    ]
    return [
        ("Traffic and latency", traffic),
        ("Models", models),
        ("Rollouts and failover", _rollouts(config)),
        ("Security and audit", security),
        ("Process", process),
        ("Drift", drift),
    ]


def _rollouts(config: MonitoringConfig) -> list[Panel]:
    """Who answers (per version, mirrored calls apart), what rollouts decided, failovers."""
    served = config.selector(model="=~$model", protocol="!=mirror")
    mirrored = config.selector(model="=~$model", protocol="mirror")
    by_model = config.selector(model="=~$model")
    return [
        Panel(
            "Answers by version (canary split)",
            (
                Target(
                    f"sum by (model, version) (rate(shipyard_requests_total{served}{RATE}))",
                    "{{model}} v{{version}}",
                ),
                Target(
                    f"sum by (model, version) (rate(shipyard_requests_total{mirrored}{RATE}))",
                    "{{model}} v{{version}} mirrored",
                ),
            ),
            unit="reqps",
            description="During a canary the candidate's share of the answers; shadow traffic "
            "(mirrored calls, never answered to a client) apart.",
        ),
        Panel(
            "Rollout agreement with stable",
            (
                Target(
                    f"max by (model, candidate) (shipyard_rollout_agreement_ratio{by_model})",
                    "{{model}} candidate v{{candidate}}",
                ),
            ),
            unit="percentunit",
            description="Share of compared rows on which the candidate answers as stable does "
            "(`[rollout.gate] min_agreement` rolls back below it).",
        ),
        Panel(
            "Rollout decisions and failovers",
            (
                Target(
                    "sum by (model, candidate, action, trigger) (increase("
                    f"shipyard_rollout_decisions_total{by_model}[1h]))",
                    "{{model}} v{{candidate}} {{action}} ({{trigger}})",
                ),
                Target(
                    "sum by (model, from_version, to_version) (increase("
                    f"shipyard_failovers_total{by_model}[1h]))",
                    "{{model}} failover v{{from_version}} → v{{to_version}}",
                ),
            ),
            width=WIDTH,
            description="Promotions, rollbacks (gate, manual, load failure, not blessed) and "
            "failovers to the last good version, over the past hour.",
        ),
    ]


def dashboard(config: MonitoringConfig | None = None) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (import it, or provision it from a file)."""
    config = config or MonitoringConfig()
    items: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for row_title, row_panels in panels(config):
        items.append(
            {
                "id": next_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id, y, x = next_id + 1, y + 1, 0
        for panel in row_panels:
            if x + panel.width > WIDTH:
                x, y = 0, y + 8
            items.append(_panel(panel, next_id, x, y))
            next_id, x = next_id + 1, x + panel.width
        y += 8
    selector = config.selector()
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        ],
        "uid": f"shipyard-{config.job}"[:40],
        "title": f"Shipyard serving ({config.job})",
        "description": "Generated by `shipyard monitoring export`; edit the generator, not this.",
        "tags": ["shipyard", "onnx", "inference"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "DS_PROMETHEUS",
                    "label": "data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                _query_var("model", f"label_values(shipyard_requests_total{selector}, model)"),
                _query_var(
                    "version",
                    "label_values(shipyard_requests_total"
                    + config.selector(model="=~$model")
                    + ", version)",
                ),
            ]
        },
        "panels": items,
    }


def _query_var(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
        "hide": 0,
    }


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    refs = "ABCDEFGH"
    result: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "refId": refs[i],
                "datasource": DATASOURCE,
                "expr": t.expr,
                "legendFormat": t.legend,
                "format": t.format,
                "range": True,
            }
            for i, t in enumerate(panel.targets)
        ],
    }
    if panel.kind == "heatmap":
        result["options"] = {"calculate": False, "yAxis": {"unit": "short"}}
    return result
