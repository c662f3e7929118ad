"""What `shipyard monitoring export` fills in: the scrape job and the alert thresholds."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MonitoringConfig(BaseModel):
    """The Prometheus job the server is scraped as, and where each alert starts firing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job: str = Field(default="shipyard", min_length=1, pattern=r"^[^\"\\{}]+$")
    """The `job` label Prometheus gives the server's targets (its scrape_config job_name)."""
    p99_ms: float = Field(default=250.0, gt=0)
    """p99 request latency (received → response ready) above which ShipyardHighP99Latency fires."""
    error_rate: float = Field(default=0.05, gt=0, le=1)
    """Share of a model's requests answered `error`, `overloaded` or `not_ready`."""
    queue_p99_ms: float = Field(default=100.0, gt=0)
    """p99 time a request waits in the batch queue."""
    auth_failures_per_s: float = Field(default=1.0, gt=0)
    """Refused calls (401/403) per second, per reason, that count as a spike."""
    drift_psi: float = Field(default=0.25, gt=0)
    """Population stability index of a feature above which it has drifted (0.25: a significant shift, as `shipyard drift status` flags)."""
    worker_restarts: int = Field(default=1, ge=1)
    """Worker processes restarted within 15 minutes (isolated model workers, per model version;
    `serve --workers` server workers, per worker) at which the restart alerts fire."""
    memory_gib: float = Field(default=4.0, gt=0)
    """Resident memory of a server process."""
    rate_window: str = Field(default="5m", pattern=r"^[0-9]+[smhd]$")
    """The range of rate()/increase() in the alert rules."""

    def selector(self, **labels: str) -> str:
        """`{job="…", k="v"…}`; a value starting with `=~` or `!=` keeps its operator."""
        parts = [f'job="{self.job}"']
        for key, value in labels.items():
            op = value[:2] if value[:2] in ("=~", "!=", "!~") else "="
            parts.append(f'{key}{op}"{value[len(op) if op != "=" else 0 :]}"')
        return "{" + ", ".join(parts) + "}"
