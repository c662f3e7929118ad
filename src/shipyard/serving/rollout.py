"""A rollout: one candidate version on trial beside the stable one, decided by its own gate.

Phases: `canary` (the candidate answers `percent` % of the model's unversioned requests) or
`shadow` (it answers none; `percent` % are mirrored to it and its answers compared with
stable's) while on trial; `passed` (the gate passed with `on_pass = "hold"`: traffic stays
split until promoted by hand); then `promoted` (the candidate takes all traffic) or
`rolled_back` (stable takes it all; the candidate is unloaded). `waiting` until both
versions are loaded.

The gate reads only evidence gathered here, from the server's own answers: per side
requests, failures (a 4xx the client caused is not the version's failure) and latencies;
and per compared request, rows that agree (`agreement.compare`). It decides when the
candidate has answered (or, in shadow, mirrored) `min_requests` requests, and earlier when
failing is already certain: a Wilson bound (z = 3) on the error rate above `max_error_rate`,
or on agreement below `min_agreement`, rolls back at once, so a broken candidate never takes
more than its share for long. Decisions (`Decision`) carry the evidence that triggered them;
the manager applies them, logs them, counts them and writes them to the audit log.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from shipyard.serving.agreement import Comparison
from shipyard.serving.rollout_config import RolloutConfig

Phase = Literal["waiting", "canary", "shadow", "passed", "promoted", "rolled_back"]
Role = Literal["stable", "candidate"]
Action = Literal["promote", "rollback", "hold"]

AFTER: dict[Action, Phase] = {"promote": "promoted", "rollback": "rolled_back", "hold": "passed"}
NOT_THE_VERSIONS_FAULT = frozenset({"invalid", "cancelled"})
"""Outcomes that do not count against a version: the client's own bad request, or it left."""
LATENCY_SAMPLES = 20_000
"""Latencies kept per side for the p99 (the newest ones)."""
Z = 3.0
"""Wilson interval width for deciding early: wrong about once in 700 decisions."""
MIN_EARLY = 20
"""Requests (or compared rows) a side needs before an early failure is judged."""


@dataclass
class Side:
    """What one version did on the rollout's traffic."""

    requests: int = 0
    failures: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def p99_ms(self) -> float | None:
        return self.percentile_ms(99)

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        return float(np.percentile(np.fromiter(self.latencies_ms, dtype=np.float64), q))

    def summary(self) -> dict[str, Any]:
        p50, p99 = self.percentile_ms(50), self.p99_ms()
        return {
            "requests": self.requests,
            "failures": self.failures,
            "error_rate": _ratio(self.failures, self.requests),
            "p50_ms": None if p50 is None else round(p50, 3),
            "p99_ms": None if p99 is None else round(p99, 3),
        }


@dataclass
class Evidence:
    """What the gate decides on."""

    stable: Side = field(default_factory=Side)
    candidate: Side = field(default_factory=Side)
    compared_requests: int = 0
    compared_rows: int = 0
    agreed_rows: int = 0
    max_abs_diff: float = 0.0
    last_problem: str | None = None
    mirrors_skipped: int = 0
    mirror_failures: int = 0

    def agreement(self) -> float | None:
        return _ratio(self.agreed_rows, self.compared_rows)

    def summary(self, *, min_p99_ms: float) -> dict[str, Any]:
        return {
            "stable": self.stable.summary(),
            "candidate": self.candidate.summary(),
            "p99_ratio": p99_ratio(self, min_p99_ms),
            "p50_delta_ms": _delta(self.candidate.percentile_ms(50), self.stable.percentile_ms(50)),
            "compared_requests": self.compared_requests,
            "compared_rows": self.compared_rows,
            "agreement": self.agreement(),
            "flip_rate": None
            if self.compared_rows == 0
            else round(1 - self.agreed_rows / self.compared_rows, 6),
            "max_abs_diff": None if self.compared_requests == 0 else self.max_abs_diff,
            "last_problem": self.last_problem,
            "mirrors_skipped": self.mirrors_skipped,
            "mirror_failures": self.mirror_failures,
        }


@dataclass(frozen=True)
class Decision:
    """A rollout decided: what, why, by whom (`trigger`), on what evidence."""

    action: Action
    trigger: str
    """"gate", "manual", "load_failure", "not_blessed"."""
    reason: str
    evidence: dict[str, Any]
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def audit_detail(self) -> dict[str, Any]:
        """The decision and the figures that decided it, flat (one audit record's detail)."""
        ev = self.evidence
        cand, stable = ev.get("candidate", {}), ev.get("stable", {})
        return {
            "action": self.action,
            "trigger": self.trigger,
            "reason": self.reason,
            "candidate_requests": cand.get("requests"),
            "candidate_error_rate": cand.get("error_rate"),
            "stable_requests": stable.get("requests"),
            "p99_ratio": ev.get("p99_ratio"),
            "compared_rows": ev.get("compared_rows"),
            "agreement": ev.get("agreement"),
            "max_abs_diff": ev.get("max_abs_diff"),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "trigger": self.trigger,
            "reason": self.reason,
            "at": self.at,
            "evidence": self.evidence,
        }


class Rollout:
    """One model's rollout: its phase, evidence and decision; routing asks it who answers."""

    def __init__(
        self,
        model: str,
        config: RolloutConfig,
        *,
        fingerprint: object,
        rng: random.Random | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.identity = (config, fingerprint)
        """A new config or new candidate files start a new rollout."""
        self.stable: int | None = None
        """The version serving beside the candidate (set by the manager once loaded)."""
        self.phase: Phase = "waiting"
        self.decision: Decision | None = None
        self.evidence = Evidence()
        self.started = time.monotonic()
        self.mirrors_in_flight = 0
        self._rng = rng or random.Random()

    @property
    def candidate(self) -> int:
        return self.config.candidate

    @property
    def on_trial(self) -> bool:
        """Traffic is split (or mirrored): the candidate is neither promoted nor rolled back."""
        return self.phase in ("canary", "shadow", "passed")

    @property
    def primary(self) -> int | None:
        """The version answering requests the rollout does not send elsewhere."""
        return self.candidate if self.phase == "promoted" else self.stable

    def begin(self, stable: int) -> None:
        """Both versions are loaded: the trial starts (or goes on with a new stable)."""
        self.stable = stable
        if self.phase == "waiting":
            self.phase = self.config.mode
            self.started = time.monotonic()

    # -- routing --------------------------------------------------------------------------

    def picks_candidate(self, key: str | None) -> bool:
        """Canary: whether this request goes to the candidate (sticky when `key` is given)."""
        share = self.config.percent / 100
        if key is None:
            return self._rng.random() < share
        digest = hashlib.sha256(f"{self.model}\0{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < share

    def wants_mirror(self, role: Role) -> bool:
        """Whether a request just answered by `role` is also sent to the other version."""
        if self.config.mode == "shadow":
            return role == "stable" and self._rng.random() < self.config.percent / 100
        return role == "candidate" and self.config.gate.min_agreement is not None

    def claim_mirror(self) -> bool:
        """Take a mirror slot; False (counted as skipped) when `max_mirrors_in_flight` run."""
        if self.mirrors_in_flight >= self.config.max_mirrors_in_flight:
            self.evidence.mirrors_skipped += 1
            return False
        self.mirrors_in_flight += 1
        return True

    def release_mirror(self) -> None:
        self.mirrors_in_flight -= 1

    # -- evidence -------------------------------------------------------------------------

    def observe(self, role: Role, outcome: str, latency_ms: float) -> Decision | None:
        """One request answered (or failed) by `role`; a decision when the gate now decides."""
        if not self.on_trial or outcome in NOT_THE_VERSIONS_FAULT:
            return None
        side = self.evidence.candidate if role == "candidate" else self.evidence.stable
        side.requests += 1
        if outcome == "success":
            side.latencies_ms.append(latency_ms)
        else:
            side.failures += 1
        return self.judge() if role == "candidate" else None

    def observe_comparison(self, comparison: Comparison) -> Decision | None:
        """One request compared between the two versions."""
        if not self.on_trial:
            return None
        ev = self.evidence
        ev.compared_requests += 1
        ev.compared_rows += comparison.rows
        ev.agreed_rows += comparison.agreed
        ev.max_abs_diff = max(ev.max_abs_diff, comparison.max_abs_diff)
        if comparison.problem is not None:
            ev.last_problem = comparison.problem
        return self.judge()

    def observe_mirror_failure(self) -> None:
        """A mirrored call to stable (canary) failed: nothing to compare."""
        self.evidence.mirror_failures += 1

    # -- the gate -------------------------------------------------------------------------

    def judge(self) -> Decision | None:
        """Fail, pass or wait, from the evidence so far (only while on trial and undecided)."""
        if self.phase not in ("canary", "shadow"):
            return None
        gate, ev = self.config.gate, self.evidence
        cand = ev.candidate
        if cand.requests >= MIN_EARLY:
            low = wilson(cand.failures, cand.requests)[0]
            if low > gate.max_error_rate:
                return self.decide("rollback", "gate", self._error_reason(early=True))
        if gate.min_agreement is not None and ev.compared_rows >= MIN_EARLY:
            high = wilson(ev.agreed_rows, ev.compared_rows)[1]
            if high < gate.min_agreement:
                return self.decide("rollback", "gate", self._agreement_reason(early=True))
        if cand.requests < gate.min_requests:
            return None
        if gate.min_agreement is not None and ev.compared_requests < gate.min_requests:
            return None
        if cand.failures / cand.requests > gate.max_error_rate:
            return self.decide("rollback", "gate", self._error_reason(early=False))
        ratio = p99_ratio(ev, gate_floor(self.config))
        if gate.max_p99_ratio is not None and ratio is not None and ratio > gate.max_p99_ratio:
            return self.decide(
                "rollback",
                "gate",
                f"candidate p99 is {ratio:.2f}x stable's (gate: at most {gate.max_p99_ratio}x)",
            )
        agreement = ev.agreement()
        if gate.min_agreement is not None and (agreement or 0.0) < gate.min_agreement:
            return self.decide("rollback", "gate", self._agreement_reason(early=False))
        passed = f"gate passed over {cand.requests} candidate requests"
        return self.decide(gate.on_pass, "gate", passed)

    def decide(self, action: Action, trigger: str, reason: str) -> Decision:
        """Record a decision (the gate's or an operator's) and move to its phase."""
        self.phase = AFTER[action]
        self.decision = Decision(action, trigger, reason, self.evidence_summary())
        return self.decision

    def evidence_summary(self) -> dict[str, Any]:
        return self.evidence.summary(min_p99_ms=gate_floor(self.config))

    def status(self) -> dict[str, Any]:
        """`GET /v2/models/{m}/rollout`: phase, versions, config, evidence and the decision."""
        gate = self.config.gate
        return {
            "model": self.model,
            "phase": self.phase,
            "mode": self.config.mode,
            "percent": self.config.percent,
            "stable_version": None if self.stable is None else str(self.stable),
            "candidate_version": str(self.candidate),
            "serving_version": None if self.primary is None else str(self.primary),
            "elapsed_s": round(time.monotonic() - self.started, 3),
            "gate": gate.model_dump(mode="json"),
            "evidence": self.evidence_summary(),
            "decision": None if self.decision is None else self.decision.to_json(),
        }

    def _error_reason(self, *, early: bool) -> str:
        cand, limit = self.evidence.candidate, self.config.gate.max_error_rate
        rate = cand.failures / cand.requests
        how = "certainly above" if early else "above"
        return (
            f"candidate error rate {rate:.2%} ({cand.failures} of {cand.requests}) is {how} "
            f"the gate's {limit:.2%}"
        )

    def _agreement_reason(self, *, early: bool) -> str:
        ev, limit = self.evidence, self.config.gate.min_agreement or 0.0
        how = "certainly below" if early else "below"
        problem = f"; {ev.last_problem}" if ev.last_problem else ""
        return (
            f"candidate agrees with stable on {ev.agreed_rows} of {ev.compared_rows} rows "
            f"({(ev.agreement() or 0):.2%}), {how} the gate's {limit:.2%}{problem}"
        )


def gate_floor(config: RolloutConfig) -> float:
    return config.gate.min_p99_ms


def p99_ratio(ev: Evidence, floor_ms: float) -> float | None:
    """Candidate p99 / stable p99, each at least `floor_ms` (µs noise is not a regression)."""
    cand, stable = ev.candidate.p99_ms(), ev.stable.p99_ms()
    if cand is None or stable is None:
        return None
    return round(max(cand, floor_ms) / max(stable, floor_ms), 4)


def wilson(successes: int, trials: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _delta(candidate: float | None, stable: float | None) -> float | None:
    """Candidate minus stable latency (ms), where both are known."""
    return None if candidate is None or stable is None else round(candidate - stable, 3)


def _ratio(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(part / whole, 6)
