"""Which loaded version answers a request, which versions stay loaded, and when to fail over.

A request that names a version gets that version, always. A request that names none goes
to the model's *primary*: during a rollout the stable version (or, by the canary's split,
the candidate; `Plan.mirror` is the other version when the request is also to be mirrored),
after a promotion the candidate, else the highest loaded version that has not failed over.

Failover (`[failover]` in model.toml): the outcomes of the last `window_requests`
unversioned requests on the primary (none older than `window_s`) are kept; once there are
that many and the share that failed through the version's own fault (not a client's bad
request) reaches `max_error_rate` (errors and a dead worker; a full queue or a passed deadline count as
neither), the version is marked failed over and unversioned traffic moves to the
next lower loaded version (the last good one, kept loaded as a standby unless
`standby = false`). It stays failed over until its files change or an explicit load asks
for it again; it still answers requests that name it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

from shipyard.serving.model_config import ModelConfig
from shipyard.serving.rollout import NOT_THE_VERSIONS_FAULT, Role, Rollout
from shipyard.serving.rollout_config import FailoverConfig
from shipyard.serving.version_state import ModelRecord, ServedVersion

LOAD_NOT_FAULT = frozenset({"overloaded", "timeout"})
"""Outcomes failover leaves out: a full queue or a passed deadline says the model has too
much work, not that it is broken (and moving the load to another version would not help)."""

RouteKey = Callable[[str], str | None]
"""Looks up a request header (HTTP) or metadata key (gRPC) by its lower-case name."""


class Plan(NamedTuple):
    """Where one request goes."""

    served: ServedVersion
    role: Role | None = None
    """The version's part in the model's rollout (None: the request is not rollout traffic)."""
    rollout: Rollout | None = None
    routed: bool = False
    """The request named no version: its outcome counts for rollout and failover."""


def wanted_versions(
    config: ModelConfig, loadable: Sequence[int], rollout: Rollout | None
) -> tuple[set[int], int | None]:
    """The versions to keep loaded among `loadable`, and the rollout's stable version.

    The version policy picks among the versions other than the candidate: those are what
    serves today (the highest is the stable one). While on trial the candidate is loaded
    beside them; once promoted it is (with the standby, under failover); rolled back, not.
    """
    cfg = config.rollout
    if cfg is None or rollout is None or cfg.candidate not in loadable:
        wanted = set(config.version_policy.select(loadable))
        stable = None
    else:
        others = [v for v in loadable if v != cfg.candidate]
        selected = set(config.version_policy.select(others))
        stable = max(selected) if selected else None
        if rollout.phase == "rolled_back":
            wanted = selected
        elif rollout.phase == "promoted":
            wanted = {cfg.candidate}
        else:
            wanted = selected | {cfg.candidate}
    failover = config.failover
    if failover is not None and failover.enabled and failover.standby and wanted:
        below = [v for v in loadable if v < max(wanted) and v not in wanted]
        if below:
            wanted.add(max(below))
    return wanted, stable


def unwanted(record: ModelRecord, version: int, not_selected: str) -> str:
    """Why a version on disk is not loaded: its rollout's decision, else the version policy."""
    rollout = record.rollout
    if rollout is not None and rollout.decision is not None:
        if rollout.phase == "rolled_back" and version == rollout.candidate:
            return f"rolled back: {rollout.decision.reason}"
        if rollout.phase == "promoted" and version == rollout.stable:
            return f"replaced by the promoted candidate, version {rollout.candidate}"
    return not_selected


def primary(record: ModelRecord) -> ServedVersion | None:
    """The version answering the model's unversioned requests outside a canary's split."""
    rollout = record.rollout
    if rollout is not None and rollout.primary is not None:
        served = record.served.get(rollout.primary)
        if served is not None and _usable(served):
            return served
    versions = record.served
    if len(versions) == 1:  # most models serve one version: no sort
        (served,) = versions.values()
        return None if served.closing else served  # usable or not, as the loop below
    fallback = None
    for number in sorted(versions, reverse=True):
        served = versions[number]
        if served.closing:
            continue
        if _usable(served):
            return served
        fallback = fallback or served
    return fallback  # every version failed over: the highest still answers


def plan(record: ModelRecord, route_key: RouteKey | None) -> Plan | None:
    """Where an unversioned request goes; None when nothing is loaded."""
    rollout = record.rollout
    if rollout is not None and rollout.on_trial and rollout.stable is not None:
        stable = record.served.get(rollout.stable)
        candidate = record.served.get(rollout.candidate)
        if _open(stable) and _open(candidate):
            assert stable is not None and candidate is not None
            if rollout.config.mode == "canary":
                header = rollout.config.sticky_key
                key = route_key(header) if header and route_key else None
                if rollout.picks_candidate(key):
                    return Plan(candidate, "candidate", rollout, routed=True)
            return Plan(stable, "stable", rollout, routed=True)
    served = primary(record)
    return None if served is None else Plan(served, routed=True)


def mirror_of(record: ModelRecord, plan: Plan) -> ServedVersion | None:
    """The other version to send a copy of this (answered) request to, if the rollout wants
    one and a mirror slot is free."""
    rollout = plan.rollout
    if rollout is None or plan.role is None or not rollout.on_trial:
        return None
    if not rollout.wants_mirror(plan.role):
        return None
    other = rollout.candidate if plan.role == "stable" else rollout.stable
    served = record.served.get(other) if other is not None else None
    if not _open(served) or not rollout.claim_mirror():
        return None
    return served


class FailoverWatch:
    """The last outcomes of a version's unversioned requests, judged against `[failover]`."""

    def __init__(self, config: FailoverConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self._outcomes: deque[tuple[float, bool]] = deque(maxlen=config.window_requests)

    def observe(self, outcome: str) -> str | None:
        """Note one outcome; the reason to fail over when the threshold is crossed, else None."""
        if outcome in NOT_THE_VERSIONS_FAULT or outcome in LOAD_NOT_FAULT:
            return None
        now = self._clock()
        failed = outcome != "success"
        self._outcomes.append((now, failed))
        horizon = now - self.config.window_s
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()
        total = len(self._outcomes)
        if total < self.config.window_requests or not failed:
            return None
        failures = sum(f for _, f in self._outcomes)
        if failures / total < self.config.max_error_rate:
            return None
        return (
            f"{failures} of the last {total} requests failed "
            f"(failover at {self.config.max_error_rate:.0%})"
        )


def _open(served: ServedVersion | None) -> bool:
    return served is not None and not served.closing and served.down_reason() is None


def _usable(served: ServedVersion) -> bool:
    return served.failed_over is None and served.down_reason() is None
