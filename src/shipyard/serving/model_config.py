"""A model's own serving config: the optional `model.toml` next to its version folders.

Unset fields fall back to the server's settings (`version_config.resolve` merges the two
once, when a version loads)::

    instances = 2                 # worker threads running this model
    warmup = true
    isolation = "process"         # run it in a supervised worker process (default "none")
                                  # "ray": on Ray Serve replicas (`shipyard deploy ray`)
    [worker]                      # only with isolation = "process" (isolation.py)
    execution_timeout_s = 30      # a batch not answered by then: worker killed, 503, restarted
    max_restart_backoff_s = 10    # restarts back off from 0.1 s, doubling up to this
    start_timeout_s = 300         # loading the version in a (re)started worker
    [ray]                         # only on Ray (ray_pool.py); unset: the server's --replicas …
    replicas = 2                  # or min_replicas = 1 + max_replicas = 4: autoscaling
    num_cpus = 0.5
    [batching]
    enabled = true                # default: on when every input and output has a dynamic dim 0
    max_batch_size = 16
    max_queue_delay_us = 1000
    max_queue_size = 256
    [queue]                       # deadlines and priorities (queue_policy.QueuePolicy)
    default_timeout_us = 50_000
    allow_timeout_override = true
    priority_levels = 2
    default_priority = 2
    [version_policy]              # one of: latest = N | all = true | specific = [1, 3]
    latest = 1
    [runtime]                     # shipyard.RuntimeOptions
    intra_op_threads = 2
    [limits]                      # any LimitsSettings field but retry_after_s
    max_body_bytes = 8_388_608
    max_tensor_elements = 1_000_000
    [drift]                       # against the version's reference profile
    enabled = true
    sample_rate = 0.1
    window = 1000
    [rollout]                     # a candidate on trial (rollout_config; docs/reliability.md)
    candidate = 2
    [failover]                    # hand traffic back to the last good version
    max_error_rate = 0.5
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shipyard.runtime.base import RuntimeOptions
from shipyard.serving.errors import ModelConfigError
from shipyard.serving.queue_policy import QueuePolicy
from shipyard.serving.rollout_config import FailoverConfig, RolloutConfig
from shipyard.serving.settings import validation_details

MODEL_CONFIG_FILE = "model.toml"


class DriftOverride(BaseModel):
    """Drift knobs a model.toml may set under [drift]; unset ones fall back to the server's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool | None = None
    sample_rate: float | None = Field(default=None, gt=0, le=1)
    window: int | None = Field(default=None, ge=10, le=10_000_000)


class BatchingOverride(BaseModel):
    """Batching knobs a model.toml may set; unset ones fall back to the server's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool | None = None
    max_batch_size: int | None = Field(default=None, ge=1)
    max_queue_delay_us: int | None = Field(default=None, ge=0)
    max_queue_size: int | None = Field(default=None, ge=1)


class LimitsOverride(BaseModel):
    """Limits a model.toml may set; unset ones fall back to the server's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_body_bytes: int | None = Field(default=None, ge=1024)
    max_json_depth: int | None = Field(default=None, ge=4, le=1000)
    max_tensor_elements: int | None = Field(default=None, ge=1)
    max_request_elements: int | None = Field(default=None, ge=1)
    max_bytes_element: int | None = Field(default=None, ge=1)
    max_output_bytes: int | None = Field(default=None, ge=1024)


class VersionPolicy(BaseModel):
    """Which versions on disk are served: the latest N, all of them, or specific ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latest: int | None = Field(default=None, ge=1)
    all: bool = False
    specific: tuple[int, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, value: Any) -> Any:
        if value == "all":
            return {"all": True}
        if value == "latest":
            return {"latest": 1}
        if isinstance(value, dict) and not any(k in value for k in ("latest", "all", "specific")):
            return {**value, "latest": 1}
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        chosen = [self.latest is not None, self.all, self.specific is not None]
        if sum(chosen) != 1:
            raise ValueError("set exactly one of latest = N, all = true, specific = [..]")
        if self.specific is not None and (not self.specific or min(self.specific) < 1):
            raise ValueError("specific must list version numbers >= 1")
        return self

    def select(self, versions: Sequence[int]) -> list[int]:
        """The versions to serve among `versions` (those on disk that can be loaded)."""
        ordered = sorted(set(versions))
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in self.specific]
        return ordered[-(self.latest or 1) :]

    def describe(self) -> str:
        if self.all:
            return "all"
        if self.specific is not None:
            return f"specific = {list(self.specific)}"
        return f"latest = {self.latest}"


class WorkerSettings(BaseModel):
    """The worker process of a model with `isolation = "process"` (serving.isolation)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    execution_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    max_restart_backoff_s: float = Field(default=10.0, ge=0.1, le=3600)
    start_timeout_s: float = Field(default=300.0, gt=0, le=3600)


class RayOverride(BaseModel):
    """Ray Serve knobs a model.toml may set under [ray]; unset ones are the server's
    (`settings.RaySettings`, from `shipyard deploy ray` flags)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    replicas: int | None = Field(default=None, ge=1, le=1024)
    min_replicas: int | None = Field(default=None, ge=0, le=1024)
    max_replicas: int | None = Field(default=None, ge=1, le=1024)
    target_ongoing_requests: float | None = Field(default=None, gt=0, le=1024)
    num_cpus: float | None = Field(default=None, gt=0, le=1024)
    max_ongoing_requests: int | None = Field(default=None, ge=1, le=10_000)
    execution_timeout_s: float | None = Field(default=None, gt=0, le=3600)
    start_timeout_s: float | None = Field(default=None, gt=0, le=3600)


class ModelConfig(BaseModel):
    """A model's serving config from its optional `model.toml`; unset fields use the server's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instances: int | None = Field(default=None, ge=1, le=64)
    warmup: bool | Literal["strict"] | None = None
    """true: warm up (a failure on synthesized inputs only warns); "strict": any warm-up
    failure refuses the version; false: no warm-up. Unset: the server's `warmup`."""
    batching: BatchingOverride = BatchingOverride()
    queue: QueuePolicy = QueuePolicy()
    version_policy: VersionPolicy = VersionPolicy()
    runtime: RuntimeOptions | None = None
    limits: LimitsOverride = LimitsOverride()
    drift: DriftOverride = DriftOverride()
    rollout: RolloutConfig | None = None
    failover: FailoverConfig | None = None
    isolation: Literal["none", "process", "ray"] | None = None
    """"process": the runtime runs in a supervised worker process, restarted when it dies or
    hangs; "ray": on Ray Serve replicas (the server must run with `shipyard deploy ray`);
    "none": in the server's process (the fastest). Unset: "ray" on a Ray deployment, else
    "none"."""
    worker: WorkerSettings = WorkerSettings()
    ray: RayOverride = RayOverride()


def read_model_config(model_dir: Path) -> ModelConfig:
    """Parse `model_dir/model.toml` (defaults when absent); errors name the file and field."""
    path = model_dir / MODEL_CONFIG_FILE
    if not path.is_file():
        return ModelConfig()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelConfigError(f"{path}: not valid TOML ({exc})") from exc
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        raise ModelConfigError(f"{path}: invalid model config ({validation_details(exc)})") from exc
