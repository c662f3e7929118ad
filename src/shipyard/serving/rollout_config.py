"""What a model.toml may say about traffic: a rollout (`[rollout]`) and failover (`[failover]`).

[rollout]
candidate = 2              # the version on trial; stable = what the version policy serves
mode = "canary"            # "shadow": mirror a share of traffic, answer from stable
percent = 10               # canary: share answered by the candidate; shadow: share mirrored
sticky_header = "x-user"   # canary: one value of this header stays on one version
compare = ["label"]        # outputs judged for agreement (default: label-like outputs)
[rollout.gate]             # decided inside the server (shipyard.serving.rollout)
min_requests = 500
max_error_rate = 0.01
max_p99_ratio = 1.5
min_p99_ms = 1.0           # p99s below this count as this (µs noise is no regression)
min_agreement = 0.99
on_pass = "promote"        # or "hold": wait for `shipyard rollout promote`
require_blessing = false   # the candidate's package must carry an ok blessing

[failover]                 # a serving version that fails at runtime hands traffic back
min_requests = 20
max_error_rate = 0.5
window_s = 30
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class GateConfig(BaseModel):
    """When a rollout is decided, from the server's own per-version counters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_requests: int = Field(default=500, ge=1, le=100_000_000)
    """Requests the candidate answers (canary) or mirrors (shadow) before it can pass."""
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    """Share of the candidate's requests that may fail (4xx the client caused excluded)."""
    max_p99_ratio: float | None = Field(default=1.5, gt=0)
    """Candidate p99 latency / stable p99 latency, over the window (None: not judged)."""
    min_p99_ms: float = Field(default=1.0, ge=0)
    """Each p99 counts as at least this in the ratio: on a model that answers in
    microseconds, scheduling noise is not a regression."""
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    """Share of compared rows whose outputs agree with stable's (None: not judged; in
    canary mode judging it mirrors each candidate request to stable)."""
    on_pass: Literal["promote", "hold"] = "promote"
    require_blessing: bool = False
    """Refuse (roll back at once) a candidate whose package carries no ok blessing."""


class RolloutConfig(BaseModel):
    """A candidate version on trial beside the stable one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidate: int = Field(ge=1)
    mode: Literal["canary", "shadow"] = "canary"
    percent: float = Field(default=10.0, gt=0, le=100)
    sticky_header: str | None = Field(default=None, min_length=1, max_length=100)
    compare: tuple[str, ...] | None = None
    """Outputs whose agreement is judged (default: integer, bool and string outputs when the
    model has any, else every output)."""
    rtol: float = Field(default=1e-3, ge=0)
    atol: float = Field(default=1e-4, ge=0)
    """Float outputs agree where |candidate - stable| <= atol + rtol * |stable|."""
    max_mirrors_in_flight: int = Field(default=16, ge=1, le=10_000)
    """Mirrored calls running at once; more are skipped (and counted), never queued."""
    gate: GateConfig = GateConfig()

    @model_validator(mode="after")
    def _sticky_only_for_canary(self) -> RolloutConfig:
        if self.sticky_header is not None and self.mode != "canary":
            raise ValueError("sticky_header only applies to mode = 'canary'")
        return self

    @property
    def sticky_key(self) -> str | None:
        """The sticky header's name as HTTP and gRPC metadata look it up (lower case)."""
        return self.sticky_header.lower() if self.sticky_header else None


class FailoverConfig(BaseModel):
    """Hand unversioned traffic to the last good version when the serving one keeps failing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    window_requests: int = Field(default=20, ge=1, le=100_000)
    """The error rate is judged over the last this many requests (once there are that many
    no older than `window_s`): a few seconds of earlier successes do not delay it."""
    max_error_rate: float = Field(default=0.5, gt=0, le=1)
    window_s: float = Field(default=30.0, gt=0, le=86_400)
    standby: bool = True
    """Keep the last good version loaded beside the serving one, so failing over is instant
    (false: fail over only to a version the version policy serves anyway)."""
