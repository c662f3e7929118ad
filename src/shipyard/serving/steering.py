"""Rollouts and failover for the model manager: keep them in step with the repository, feed
them each routed request's outcome, and carry out what they decide.

The manager calls `sync` while it reconciles a model (a new or changed `[rollout]`, or new
candidate files, start a new rollout; a candidate that fails to load, or lacks a required
blessing, is rolled back before it takes a request), `begin` once both versions are loaded,
and `observe` after every routed request. A decision (the gate's, or an operator's through
`decide`) changes routing at once, on the event loop; then the manager reconciles the model
in the background so the loser is unloaded (or a promoted candidate loaded). Every decision
and failover is logged with its evidence, counted (`shipyard_rollout_decisions_total`,
`shipyard_failovers_total`) and emitted as a `ModelEvent` the audit log records.

Decisions live in memory: a restarted server starts a rollout that is still in its
model.toml again (a broken candidate is rolled back again within its gate window).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

from shipyard.serving.errors import ModelNotFound, RolloutError
from shipyard.serving.metrics import Metrics
from shipyard.serving.rollout import AFTER, Action, Decision, Rollout
from shipyard.serving.traffic import FailoverWatch, Plan, RouteKey, mirror_of, plan
from shipyard.serving.version_state import ModelEvent, ModelRecord, ServedVersion

if TYPE_CHECKING:
    from shipyard.serving.calls import CallContext
    from shipyard.serving.repository import ModelOnDisk

log = logging.getLogger("shipyard.serving.rollout")

Emit = Callable[[ModelRecord, ModelEvent], None]
Settle = Callable[[str, "CallContext | None"], Coroutine[Any, Any, None]]


class Steering:
    """The manager's rollout and failover side (one per manager)."""

    def __init__(self, metrics: Metrics, *, emit: Emit, settle: Settle) -> None:
        self._emit = emit
        self._settle = settle
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_decision: list[Callable[[str, int, str, str], None]] = []
        """Called with (model, candidate, action, reason) for each decision taken here (not
        one adopted from a peer worker)."""
        registry = metrics.registry
        self.decisions = Counter(
            "shipyard_rollout_decisions",
            "Rollout decisions, by action (promote, rollback, hold) and trigger (gate, "
            "manual, load_failure, not_blessed).",
            ("model", "candidate", "action", "trigger"),
            registry=registry,
        )
        self.agreement = Gauge(
            "shipyard_rollout_agreement_ratio",
            "Share of compared rows on which a rollout's candidate agrees with stable.",
            ("model", "candidate"),
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.failovers = Counter(
            "shipyard_failovers",
            "Times unversioned traffic left a failing version for the last good one.",
            ("model", "from_version", "to_version"),
            registry=registry,
        )

    # -- keeping rollouts in step with the repository -----------------------------------------

    def sync(self, record: ModelRecord, disk: ModelOnDisk) -> None:
        """Start, keep or end the model's rollout as its config and candidate files say."""
        config = record.config.rollout if record.config is not None else None
        if config is None:
            record.rollout = None
            return
        fingerprint = disk.versions.get(config.candidate)
        current = record.rollout
        if current is not None and current.identity == (config, fingerprint):
            return
        record.rollout = Rollout(record.name, config, fingerprint=fingerprint)
        newer = sorted(v for v in disk.versions if v > config.candidate)
        if newer:
            log.warning(
                "%s: versions %s are newer than the rollout's candidate %d; while [rollout] "
                "names version %d the version policy picks stable among the others, and after "
                "a decision the rollout alone decides what serves: give the newest version "
                "its own rollout (candidate = %d) or remove [rollout]",
                record.name,
                newer,
                config.candidate,
                config.candidate,
                newer[-1],
                extra={"model": record.name},
            )
        where = "" if fingerprint is not None else " (not in the repository yet)"
        log.info(
            "rollout of %s version %d: %s at %g%%%s",
            record.name,
            config.candidate,
            config.mode,
            config.percent,
            where,
            extra={"model": record.name, "version": config.candidate},
        )

    def loaded(self, record: ModelRecord, served: ServedVersion) -> None:
        """A version was just loaded: refuse an unblessed candidate before it takes traffic."""
        rollout = record.rollout
        if rollout is None or served.version != rollout.candidate or not _open(rollout):
            return
        if rollout.config.gate.require_blessing:
            blessing = served.model.manifest.blessing
            if blessing is None or not blessing.ok:
                why = "no blessing" if blessing is None else "a failed blessing"
                reason = f"the gate requires a blessing and the candidate's package has {why}"
                self._apply(record, rollout.decide("rollback", "not_blessed", reason), None)

    def failed_to_load(self, record: ModelRecord, version: int, reason: str) -> None:
        rollout = record.rollout
        if rollout is not None and version == rollout.candidate and _open(rollout):
            self._apply(
                record,
                rollout.decide("rollback", "load_failure", f"failed to load: {reason}"),
                None,
            )

    def begin(self, record: ModelRecord, stable: int | None) -> None:
        """After a reconcile: start the trial once stable and candidate are both loaded."""
        rollout = record.rollout
        if rollout is None or stable is None:
            return
        if stable in record.served and rollout.candidate in record.served:
            rollout.begin(stable)
        elif rollout.phase != "waiting":
            rollout.stable = stable

    # -- requests -----------------------------------------------------------------------------

    def observe(self, record: ModelRecord, plan: Plan, outcome: str, latency_ms: float) -> None:
        """One routed request's outcome: rollout evidence, and the failover watch."""
        rollout = plan.rollout
        if rollout is not None and plan.role is not None:
            decision = rollout.observe(plan.role, outcome, latency_ms)
            if decision is not None:
                self._apply(record, decision, None)
        served = plan.served
        config = record.config.failover if record.config is not None else None
        if config is None or not config.enabled or served.failed_over is not None:
            return
        if plan.role == "candidate":
            return  # a failing candidate is the gate's to roll back
        if served.failover is None or served.failover.config != config:
            served.failover = FailoverWatch(config)
        reason = served.failover.observe(outcome)
        if reason is not None:
            self._fail_over(record, served, reason)

    def compared(self, record: ModelRecord, rollout: Rollout, decision: Decision | None) -> None:
        """After a mirrored comparison: export the agreement, apply a decision."""
        agreement = rollout.evidence.agreement()
        if agreement is not None:
            self.agreement.labels(record.name, str(rollout.candidate)).set(agreement)
        if decision is not None:
            self._apply(record, decision, None)

    # -- operators ----------------------------------------------------------------------------

    def status(self, record: ModelRecord | None, name: str) -> dict[str, Any]:
        if record is None:
            raise ModelNotFound(name)
        if record.rollout is None:
            raise RolloutError(f"model {name!r} has no [rollout] in its model.toml")
        return record.rollout.status()

    def decide(
        self, record: ModelRecord | None, name: str, action: Action, cause: CallContext | None
    ) -> dict[str, Any]:
        """An operator promotes or rolls back (or holds) the model's rollout by hand."""
        if record is None:
            raise ModelNotFound(name)
        rollout = record.rollout
        if rollout is None:
            raise RolloutError(f"model {name!r} has no [rollout] in its model.toml")
        done = {"promote": "promoted", "rollback": "rolled_back"}.get(action)
        if rollout.phase == done:
            raise RolloutError(f"the rollout of {name!r} is already {rollout.phase}")
        who = cause.principal if cause is not None else "an operator"
        decision = rollout.decide(action, "manual", f"{action} by {who}")
        self._apply(record, decision, cause)
        return rollout.status()

    def adopt(self, record: ModelRecord | None, action: str, candidate: int, reason: str) -> None:
        """Another worker decided this model's rollout: decide the same here."""
        rollout = record.rollout if record is not None else None
        chosen = next((a for a in AFTER if a == action), None)
        if record is None or rollout is None or chosen is None or rollout.candidate != candidate:
            return
        if rollout.phase != AFTER[chosen]:
            self._apply(record, rollout.decide(chosen, "peer", reason), None)

    async def wait(self) -> None:
        """Let background reconciles started by decisions finish (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- carrying decisions out ---------------------------------------------------------------

    def _apply(self, record: ModelRecord, decision: Decision, cause: CallContext | None) -> None:
        rollout = record.rollout
        assert rollout is not None
        candidate = rollout.candidate
        self.decisions.labels(record.name, str(candidate), decision.action, decision.trigger).inc()
        level = logging.WARNING if decision.action == "rollback" else logging.INFO
        log.log(
            level,
            "rollout of %s version %d: %s (%s): %s; evidence %s",
            record.name,
            candidate,
            decision.action,
            decision.trigger,
            decision.reason,
            json.dumps(decision.evidence, sort_keys=True),
            extra={"model": record.name, "version": candidate},
        )
        if decision.trigger != "peer":
            for hook in self.on_decision:
                hook(record.name, candidate, decision.action, decision.reason)
        detail = json.dumps(decision.audit_detail())
        event = ModelEvent("rollout", record.name, candidate, decision.action, detail, cause)
        self._emit(record, event)
        if decision.action != "hold":
            self._background(record.name, cause)

    def _fail_over(self, record: ModelRecord, served: ServedVersion, reason: str) -> None:
        lower = [
            v
            for v, s in record.served.items()
            if v < served.version and s.failed_over is None and not s.closing
        ]
        if not lower:
            return  # nowhere to go: keep serving (and failing) rather than answer 503s
        target = max(lower)
        served.failed_over = f"failed over to version {target}: {reason}"
        self.failovers.labels(record.name, str(served.version), str(target)).inc()
        log.error(
            "%s version %d is failing; unversioned requests now go to version %d: %s",
            record.name,
            served.version,
            target,
            reason,
            extra={"model": record.name, "version": served.version},
        )
        detail = json.dumps({"to_version": target, "reason": reason})
        self._emit(record, ModelEvent("failover", record.name, served.version, "ok", detail))

    def _background(self, name: str, cause: CallContext | None) -> None:
        task = asyncio.get_running_loop().create_task(
            self._settle(name, cause), name=f"rollout-{name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _open(rollout: Rollout) -> bool:
    return rollout.phase in ("waiting", "canary", "shadow", "passed")


class Router:
    """Routes each request of the manager's models and feeds its outcome back (the data
    plane's side of rollouts and failover)."""

    def __init__(
        self,
        records: Mapping[str, ModelRecord],
        steering: Steering,
        get: Callable[[str, int | None], ServedVersion],
    ) -> None:
        self._records = records
        self._steering = steering
        self._get = get

    def plan(self, name: str, version: int | None, route_key: RouteKey | None = None) -> Plan:
        """Where one request goes: the version it names, else as the model's rollout and
        failover route it (`traffic.plan`); ModelNotFound / ModelNotReady as `get`."""
        if version is not None:
            return Plan(self._get(name, version))
        record = self._records.get(name)
        found = plan(record, route_key) if record is not None else None
        return found if found is not None else Plan(self._get(name, None), routed=True)

    def observe(self, route: Plan, outcome: str, latency_ms: float) -> None:
        """A routed request's outcome, for its model's rollout gate and failover watch."""
        record = self._records.get(route.served.name)
        if record is not None and route.routed:
            self._steering.observe(record, route, outcome, latency_ms)

    def mirror_of(self, route: Plan) -> ServedVersion | None:
        """The rollout's other version, when this answered request is also to be mirrored."""
        record = self._records.get(route.served.name)
        return mirror_of(record, route) if record is not None else None

    def compared(self, route: Plan, decision: Decision | None) -> None:
        """A mirrored call finished: export its agreement, carry out a gate decision."""
        record = self._records.get(route.served.name)
        if record is not None and route.rollout is not None and record.rollout is route.rollout:
            self._steering.compared(record, route.rollout, decision)

    def status(self, name: str) -> dict[str, Any]:
        """The model's rollout: phase, versions, gate, evidence, decision."""
        return self._steering.status(self._records.get(name), name)

    def adopt(self, name: str, action: str, candidate: int, reason: str) -> None:
        """A peer worker's rollout decision, taken here too."""
        self._steering.adopt(self._records.get(name), action, candidate, reason)

    async def decide(
        self, name: str, action: Action, *, cause: CallContext | None = None
    ) -> dict[str, Any]:
        """Promote or roll back the model's rollout by hand; its status once carried out."""
        self._steering.decide(self._records.get(name), name, action, cause)
        await self._steering.wait()
        return self.status(name)
