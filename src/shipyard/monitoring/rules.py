"""Prometheus alerting rules for `shipyard serve`, and a small YAML writer for them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shipyard.monitoring.config import MonitoringConfig


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    runbook: str

    def to_rule(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": f"{self.description} Runbook: {self.runbook}",
            },
        }


def alerts(config: MonitoringConfig | None = None) -> list[Alert]:
    """Every alert, its threshold taken from `config`."""
    c = config or MonitoringConfig()
    w = c.rate_window
    req = "shipyard_requests_total" + c.selector()
    bad = "shipyard_requests_total" + c.selector(outcome="=~error|overloaded|not_ready|timeout")
    not_ready = "shipyard_requests_total" + c.selector(outcome="not_ready")
    job = c.selector()

    def p99(metric: str) -> str:
        return (
            f"histogram_quantile(0.99, sum by (job, model, le) (rate({metric}_bucket{job}[{w}])))"
        )

    return [
        Alert(
            "ShipyardTargetDown",
            f"up{job} == 0",
            "5m",
            "critical",
            "{{ $labels.instance }}: Prometheus cannot scrape the shipyard server",
            "The server at {{ $labels.instance }} has not answered /metrics for 5 minutes.",
            "check that the process runs (systemctl status / kubectl get pods) and that "
            "/metrics is reachable with the scraper's token (metrics_require_auth).",
        ),
        Alert(
            "ShipyardHighErrorRate",
            f"sum by (job, model) (rate({bad}[{w}])) / sum by (job, model) (rate({req}[{w}])) "
            f"> {c.error_rate:g}",
            "5m",
            "critical",
            "{{ $labels.model }}: {{ $value | humanizePercentage }} of requests fail",
            f"More than {c.error_rate:.0%} of the requests to model {{{{ $labels.model }}}} "
            "were answered error, overloaded, not_ready or timeout.",
            "see the outcome split on the dashboard; for overloaded raise "
            "batching.max_queue or add instances, for error read the server log by request id.",
        ),
        Alert(
            "ShipyardHighP99Latency",
            f"{p99('shipyard_request_duration_seconds')} > {c.p99_ms / 1000:g}",
            "10m",
            "warning",
            "{{ $labels.model }}: p99 latency {{ $value | humanizeDuration }}",
            f"p99 request latency of model {{{{ $labels.model }}}} is above {c.p99_ms:g} ms.",
            "compare queue time with compute time: a long queue needs more instances or "
            "a smaller max_latency_us, a long compute a smaller batch or a compressed version.",
        ),
        Alert(
            "ShipyardHighQueueTime",
            f"{p99('shipyard_queue_duration_seconds')} > {c.queue_p99_ms / 1000:g}",
            "10m",
            "warning",
            "{{ $labels.model }}: requests wait {{ $value | humanizeDuration }} in the queue (p99)",
            f"p99 batch-queue wait of model {{{{ $labels.model }}}} is above "
            f"{c.queue_p99_ms:g} ms.",
            "the model cannot keep up: add instances (SHIPYARD_INSTANCES) or servers, or "
            "lower batching.max_latency_us.",
        ),
        Alert(
            "ShipyardModelNotReady",
            f"sum by (job, model, version) (rate({not_ready}[{w}])) > 0",
            "5m",
            "critical",
            "{{ $labels.model }} v{{ $labels.version }}: requests answered not_ready",
            "Requests for model {{ $labels.model }} version {{ $labels.version }} are refused "
            "because that version is not loaded.",
            "run `curl .../v2/repository/index` to see the version's state and reason, fix "
            "the package and POST /v2/repository/models/{{ $labels.model }}/load.",
        ),
        Alert(
            "ShipyardNoModelsLoaded",
            f"max by (job, instance) (shipyard_models_loaded{job}) == 0",
            "5m",
            "critical",
            "{{ $labels.instance }}: no model version is loaded",
            "The server at {{ $labels.instance }} serves no model at all.",
            "check the repository path and the server log for load errors.",
        ),
        Alert(
            "ShipyardModelLoadFailures",
            f"sum by (job, model) (increase(shipyard_model_load_failures_total{job}[15m])) > 0",
            "1m",
            "warning",
            "{{ $labels.model }}: a version failed to load",
            "A version of model {{ $labels.model }} failed to load or warm up in the last 15 "
            "minutes; an older version may still be serving.",
            "POST /v2/repository/models/{{ $labels.model }}/load answers 400 with the reasons; "
            "`shipyard inspect` the package.",
        ),
        Alert(
            "ShipyardRolloutRolledBack",
            "sum by (job, model, candidate, trigger) (increase(shipyard_rollout_decisions_total"
            + c.selector(action="rollback")
            + "[15m])) > 0",
            "1m",
            "warning",
            "{{ $labels.model }}: candidate v{{ $labels.candidate }} was rolled back "
            "({{ $labels.trigger }})",
            "The rollout of model {{ $labels.model }} version {{ $labels.candidate }} was rolled "
            "back in the last 15 minutes; stable answers all traffic.",
            "`shipyard rollout status` shows the evidence (error rate, p99 ratio, agreement); "
            "fix the candidate, then give model.toml a new [rollout].",
        ),
        Alert(
            "ShipyardFailover",
            "sum by (job, model, from_version, to_version) (increase(shipyard_failovers_total"
            + job
            + "[15m])) > 0",
            "1m",
            "critical",
            "{{ $labels.model }}: failed over from v{{ $labels.from_version }} to "
            "v{{ $labels.to_version }}",
            "Version {{ $labels.from_version }} of model {{ $labels.model }} kept failing; "
            "unversioned traffic went to version {{ $labels.to_version }}.",
            "read the server log for the failing version's errors; it takes traffic again "
            "when its files change or POST /v2/repository/models/{{ $labels.model }}/load.",
        ),
        Alert(
            "ShipyardModelWorkerRestarts",
            "sum by (job, model, version, reason) (increase(shipyard_worker_restarts_total"
            + job
            + f"[15m])) >= {c.worker_restarts}",
            "1m",
            "warning",
            "{{ $labels.model }} v{{ $labels.version }}: model worker restarted "
            "({{ $labels.reason }})",
            "The isolated worker process of model {{ $labels.model }} version "
            "{{ $labels.version }} was started again in the last 15 minutes "
            "({{ $labels.reason }}); its in-flight requests were answered 503.",
            "crashed: read the server log for the worker's exit status (out of memory shows "
            "as SIGKILL); timeout: a batch ran past [worker] execution_timeout_s, so raise it "
            "or lower max_batch_size; start_failed: the version no longer loads.",
        ),
        Alert(
            "ShipyardServerWorkerRestarts",
            "sum by (job, instance, worker) (increase(shipyard_server_worker_restarts_total"
            + job
            + f"[15m])) >= {c.worker_restarts}",
            "1m",
            "warning",
            "{{ $labels.instance }}: server worker {{ $labels.worker }} restarted",
            "Server worker {{ $labels.worker }} of {{ $labels.instance }} (serve --workers) "
            "died and was started again in the last 15 minutes.",
            "read the server log for the worker's exit status and last lines; an out-of-memory "
            "kill shows as SIGKILL (compare resident memory per worker on the dashboard).",
        ),
        Alert(
            "ShipyardAuditUnhealthy",
            f"min by (job, instance) (shipyard_audit_healthy{job}) == 0",
            "1m",
            "critical",
            "{{ $labels.instance }}: the audit log cannot be written; audited calls are refused",
            "The server at {{ $labels.instance }} answers audited calls (infer, load) 503 "
            "because it cannot append to its audit log.",
            "free disk space or fix the audit file's permissions; the server recovers by "
            "itself once it can write (docs/security.md).",
        ),
        Alert(
            "ShipyardAuditWriteFailures",
            f"sum by (job, instance) (increase(shipyard_audit_write_failures_total{job}[{w}])) > 0",
            "1m",
            "warning",
            "{{ $labels.instance }}: audit log writes fail",
            "Appends to the audit log of {{ $labels.instance }} failed and are being retried.",
            "check disk space and the file system of the audit log before it turns unhealthy.",
        ),
        Alert(
            "ShipyardAuthFailureSpike",
            f"sum by (job, instance, reason) (rate(shipyard_auth_failures_total{job}[{w}])) "
            f"> {c.auth_failures_per_s:g}",
            "5m",
            "warning",
            '{{ $labels.instance }}: {{ $value | printf "%.1f" }} refused calls/s '
            "({{ $labels.reason }})",
            f"More than {c.auth_failures_per_s:g} calls per second were refused for "
            "{{ $labels.reason }}.",
            "an expired or revoked token in a client shows as one reason rising; many "
            "invalid_token from one source is someone guessing: check the audit log.",
        ),
        Alert(
            "ShipyardFeatureDrift",
            f"max by (job, model, version, feature) (shipyard_drift_psi{job}) > {c.drift_psi:g}",
            "30m",
            "warning",
            "{{ $labels.model }} v{{ $labels.version }}: feature {{ $labels.feature }} drifted "
            '(PSI {{ $value | printf "%.2f" }})',
            f"The inputs of model {{{{ $labels.model }}}} differ from its reference profile "
            f"(PSI above {c.drift_psi:g}).",
            "compare recent inputs with the training data; retrain or check the upstream "
            "feature pipeline.",
        ),
        Alert(
            "ShipyardHighMemory",
            f"max by (job, instance) (process_resident_memory_bytes{job}) "
            f"> {int(c.memory_gib * 2**30)}",
            "15m",
            "warning",
            "{{ $labels.instance }}: resident memory {{ $value | humanize1024 }}B",
            f"The server process uses more than {c.memory_gib:g} GiB.",
            "count the loaded versions (each holds a session); unload old ones or give the "
            "process more memory.",
        ),
    ]


def rules(config: MonitoringConfig | None = None) -> dict[str, Any]:
    """The rule file's content: one group, `shipyard`."""
    return {"groups": [{"name": "shipyard", "rules": [a.to_rule() for a in alerts(config)]}]}


def to_yaml(data: Any, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists and scalars; strings are JSON-quoted, which YAML
    reads as double-quoted scalars, so no PromQL or template character needs escaping."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, dict | list) and value:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(value, indent + 2))
            else:
                lines.append(f"{pad}{key}: {_scalar(value)}")
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, dict | list) and item:
                body = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {body.lstrip()}")
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(pad + _scalar(data))
    return "\n".join(lines)


def _scalar(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return json.dumps(value, ensure_ascii=False)
