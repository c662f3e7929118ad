"""Model lifecycle: load (verified), warm up, swap in atomically, unload after in-flight work.

States per version: LOADING -> READY, or UNAVAILABLE with the reason; READY -> UNLOADING ->
UNAVAILABLE. A new or changed version is loaded and warmed on a worker thread while the
current one keeps serving, then swapped in by replacing the served-versions mapping (one
assignment on the event loop); the version it replaces is unloaded once the requests that
already hold it finish. A version that fails to load is remembered with its error and
fingerprint and not retried until its files change or an explicit load asks for it; under
`latest = N` the policy then falls back to the newest versions that do load.

All state lives on the event loop; only loading, warm-up and disk scans run on threads.
Listeners (`manager.listeners`, e.g. the audit log) hear of every load, reload and unload
as a `ModelEvent`, on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from shipyard.package.swap import read_stable
from shipyard.serving.arrivals import Arrivals
from shipyard.serving.drift import DriftMonitor
from shipyard.serving.errors import ModelNotFound, ModelNotReady
from shipyard.serving.loader import build_batcher, open_version
from shipyard.serving.metrics import Metrics
from shipyard.serving.model_config import ModelConfig
from shipyard.serving.repository import ModelOnDisk, ModelRepository
from shipyard.serving.settings import ServerSettings
from shipyard.serving.steering import Router, Steering
from shipyard.serving.traffic import primary, unwanted, wanted_versions
from shipyard.serving.version_config import (
    VersionConfig,
    ceiling_problem,
    downgrade_refusal,
    resolve,
)
from shipyard.serving.version_state import (
    IndexEntry,
    ModelEvent,
    ModelRecord,
    ModelState,
    ServedVersion,
    VersionStatus,
)

if TYPE_CHECKING:
    from shipyard.serving.calls import CallContext

log = logging.getLogger("shipyard.serving.manager")


class ModelManager:
    """Keeps the served versions in line with the repository, its policies and requests."""

    def __init__(
        self,
        repository: ModelRepository,
        *,
        settings: ServerSettings,
        metrics: Metrics,
        kek: bytes | None = None,
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.metrics = metrics
        self.kek = kek
        """Key-encryption key for encrypted packages (None: $SHIPYARD_KEK when needed)."""
        self.listeners: list[Callable[[ModelEvent], None]] = []
        self.arrivals = Arrivals()
        """What the batchers ask whether a request can still arrive (`serving.arrivals`)."""
        self.drift = DriftMonitor(metrics.local_registry, shared=metrics.multiprocess_dir)
        """Drift trackers of the served versions (the data plane feeds them)."""
        self._records: dict[str, ModelRecord] = {}
        self.steering = Steering(metrics, emit=self._emit, settle=self._settle)
        """Rollouts and failover: what they decide, carried out."""
        self.router = Router(self._records, self.steering, self.get)
        """Where each request goes (rollouts, failover), and what its outcome tells them."""
        self._poller: asyncio.Task[None] | None = None
        self.started = False

    async def start(self) -> None:
        """Load every model in the repository, then watch it if polling is on."""
        await self.refresh()
        self.started = True
        if self.settings.poll_interval_s > 0:
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(), name="repository-poller"
            )

    async def stop(self) -> None:
        """Stop watching and unload everything, letting in-flight requests finish."""
        self.started = False
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for record in list(self._records.values()):
            async with record.lock:
                await self._retire(record, set(record.served), reason="server stopped")

    async def refresh(self) -> None:
        """Scan the repository once and reconcile every model found or known."""
        names = await asyncio.to_thread(self.repository.model_names)
        targets = sorted(set(names) | set(self._records))
        results = await asyncio.gather(
            *(self._reconcile(n) for n in targets), return_exceptions=True
        )
        for name, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                log.error("could not reconcile model %s: %r", name, result, extra={"model": name})

    async def load(self, name: str, *, cause: CallContext | None = None) -> None:
        """Load (or reload) a model: re-read its config and retry versions that failed.

        The model events it causes name `cause`, the call it runs for."""
        if await asyncio.to_thread(self.repository.scan, name) is None:
            raise ModelNotFound(name)
        record = self._records.setdefault(name, ModelRecord(name))
        record.unloaded_by_request = False
        await self._reconcile(name, force=True, cause=cause)
        failure = self._records.get(name, record).load_failure()
        if failure is not None:
            raise failure

    async def unload(self, name: str, *, cause: CallContext | None = None) -> None:
        """Stop serving every version of a model until it is loaded again (events name `cause`)."""
        record = self._records.get(name)
        if record is None:
            if await asyncio.to_thread(self.repository.scan, name) is None:
                raise ModelNotFound(name)
            record = self._records.setdefault(name, ModelRecord(name))
        async with record.locked(cause):
            record.unloaded_by_request = True
            await self._retire(record, set(record.served), reason="unloaded by request")

    @contextlib.contextmanager
    def lease(self, name: str, version: int | None = None) -> Iterator[ServedVersion]:
        """The served version for a request (highest when None), held until the block ends."""
        served = self.get(name, version)
        served.acquire()
        try:
            yield served
        finally:
            served.release()

    def get(self, name: str, version: int | None = None) -> ServedVersion:
        """The served version (highest when None) or ModelNotFound / ModelNotReady."""
        record = self._records.get(name)
        if record is None:
            raise ModelNotFound(name)
        if version is None:
            served = primary(record)
            if served is None:
                raise ModelNotReady(name, reason=record.why_not_ready())
            return _up(served)
        served = record.served.get(version)
        if served is not None and not served.closing:
            return _up(served)
        status = record.statuses.get(version)
        if status is None:
            raise ModelNotFound(name, version)
        raise ModelNotReady(name, version, reason=status.reason or status.state.value)

    async def _settle(self, name: str, cause: CallContext | None) -> None:
        """After a rollout decision: load or unload what it changed."""
        try:
            await self._reconcile(name, cause=cause)
        except Exception:
            log.exception("could not apply the rollout decision for %s", name)

    def served_versions(self, name: str) -> list[int]:
        record = self._records.get(name)
        return sorted(record.served) if record else []

    def in_flight(self) -> int:
        """Requests holding a served version now (leased and not yet released)."""
        return sum(s.leases for r in self._records.values() for s in r.served.values())

    def ready(self) -> bool:
        """Started, and (strict) every model not unloaded on request has a READY version that
        can answer (an isolated one whose worker is down cannot)."""
        if not self.started:
            return False
        if not self.settings.strict_readiness:
            return True
        return all(
            r.unloaded_by_request or any(s.down_reason() is None for s in r.served.values())
            for r in self._records.values()
        )

    async def index(self, *, ready_only: bool = False) -> list[IndexEntry]:
        """Every model and version known or on disk, with its state and reason."""
        on_disk = await asyncio.to_thread(self.repository.model_names)
        entries: list[IndexEntry] = []
        for name in sorted(set(on_disk) | set(self._records)):
            record = self._records.get(name)
            if record is None:
                entries.append(IndexEntry(name, None, ModelState.UNAVAILABLE, "not loaded yet"))
            else:
                entries += record.index_entries()
        if ready_only:
            entries = [e for e in entries if e.state is ModelState.READY]
        return entries

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.refresh()
            except Exception:  # keep watching: one bad scan must not stop hot reload
                log.exception("repository scan failed")

    async def _reconcile(
        self, name: str, *, force: bool = False, cause: CallContext | None = None
    ) -> None:
        record = self._records.setdefault(name, ModelRecord(name))
        async with record.locked(cause):
            disk = await asyncio.to_thread(self.repository.scan, name)
            if disk is None:
                await self._retire(record, set(record.served), reason="removed from the repository")
                if self._records.get(name) is record:
                    del self._records[name]
                return
            await self._reconcile_locked(record, disk, force=force)

    async def _reconcile_locked(
        self, record: ModelRecord, disk: ModelOnDisk, *, force: bool
    ) -> None:
        config = disk.config
        config_error = disk.config_error
        if config is not None:
            config_error = ceiling_problem(config, self.settings, disk.path)
            if config_error is not None:
                config = None  # over a server ceiling: like an invalid file, keep the old one
        if config_error != record.config_error and config_error:
            log.error("%s", config_error, extra={"model": record.name})
        record.config_error = config_error
        # a served version whose folder is gone keeps serving until the versions the policy
        # falls back to are loaded, so removing the newest version leaves no gap
        gone = set(record.statuses) - set(disk.versions)
        if config is None or (record.unloaded_by_request and not force):
            await self._retire_removed(record, gone)
            why = config_error or "unloaded by request; load it to serve again"
            for version in disk.versions:
                if version not in record.served:
                    record.statuses[version] = VersionStatus(ModelState.UNAVAILABLE, why)
            return
        # a version that failed is retried when its files or the model's config change
        # (e.g. `warmup = false` added to model.toml after a failed warm-up)
        config_changed = record.config != config
        record.config = config
        broken = {
            v
            for v, s in record.statuses.items()
            if s.failed
            and not force
            and not config_changed
            and s.fingerprint == disk.versions.get(v)
        }
        resolved = resolve(config, self.settings)
        self.steering.sync(record, disk)
        while True:
            loadable = [v for v in disk.versions if v not in broken]
            wanted, stable = wanted_versions(config, loadable, record.rollout)
            refusal = downgrade_refusal(self.settings, wanted, record.high_water, force=force)
            if refusal is not None:
                self._refuse_downgrade(record, disk, wanted, refusal)
                return
            failed = False
            for version in sorted(wanted, reverse=True):
                current = record.served.get(version)
                target = (disk.versions[version], config)
                if current is not None and (current.fingerprint, current.config) == target:
                    continue
                if (
                    current is not None
                    and not force
                    and record.failed_reloads.get(version) == target
                ):
                    continue
                if await self._load_version(record, disk, version, config, resolved):
                    record.failed_reloads.pop(version, None)
                    self.steering.loaded(record, record.served[version])
                elif current is not None:  # a reload failed: keep serving what works
                    record.failed_reloads[version] = target
                    why = record.statuses[version].reason
                    record.statuses[version] = VersionStatus(
                        ModelState.READY,
                        f"reload failed, still serving the earlier load: {why}",
                        current.fingerprint,
                    )
                else:
                    broken.add(version)
                    failed = True
                    self.steering.failed_to_load(record, version, record.statuses[version].reason)
            if not failed:
                break
        self.steering.begin(record, stable)
        await self._retire_removed(record, gone)
        not_selected = f"not selected by the version policy ({config.version_policy.describe()})"
        for version in sorted(set(record.served) - wanted):
            await self._retire(record, {version}, reason=unwanted(record, version, not_selected))
        for version in disk.versions:
            status = record.statuses.get(version)
            if version not in wanted and (status is None or not status.failed):
                why = unwanted(record, version, not_selected)
                record.statuses[version] = VersionStatus(ModelState.UNAVAILABLE, why)
        if record.served:
            # an explicit load (force) is the operator's word: what it serves is the new mark
            top = max(record.served)
            record.high_water = top if force else max(record.high_water, top)

    def _refuse_downgrade(
        self, record: ModelRecord, disk: ModelOnDisk, wanted: set[int], reason: str
    ) -> None:
        """Keep serving what is served (even a removed folder) rather than roll back silently."""
        for version in sorted(wanted - set(record.served)):
            status = record.statuses.get(version)
            record.statuses[version] = VersionStatus(
                ModelState.UNAVAILABLE, reason, disk.versions.get(version)
            )
            if status is None or status.reason != reason:  # say it once, not at every scan
                self._emit(record, ModelEvent("load", record.name, version, "failed", reason))
                _log(logging.ERROR, "refused %s version %d: %s", record.name, version, reason)

    async def _load_version(
        self,
        record: ModelRecord,
        disk: ModelOnDisk,
        version: int,
        config: ModelConfig,
        resolved: VersionConfig,
    ) -> bool:
        fingerprint = disk.versions[version]
        record.statuses[version] = VersionStatus(ModelState.LOADING, fingerprint=fingerprint)
        _log(logging.INFO, "loading %s version %d", record.name, version)
        try:
            opening = functools.partial(
                open_version,
                disk.path,
                version,
                resolved,
                public_key=self.settings.public_key,
                kek=self.kek,
                drift=self.drift,
            )
            model, no_batching = await asyncio.to_thread(
                read_stable, disk.path / str(version), opening, discard=lambda o: o[0].close()
            )
        except Exception as exc:
            reason = str(exc) or repr(exc)
            record.statuses[version] = VersionStatus(
                ModelState.UNAVAILABLE, reason, fingerprint, failed=True
            )
            self.metrics.load_failures.labels(record.name).inc()
            kind = "reload" if version in record.served else "load"
            self._emit(record, ModelEvent(kind, record.name, version, "failed", reason))
            _log(logging.ERROR, "refused %s version %d: %s", record.name, version, reason)
            return False
        served = ServedVersion(
            model,
            config=config,
            resolved=resolved,
            batcher=build_batcher(
                model, resolved, no_batching, metrics=self.metrics, arrivals=self.arrivals
            ),
            fingerprint=fingerprint,
        )
        previous = record.served.get(version)
        record.served = {**record.served, version: served}
        note = f"batching off: {no_batching}" if no_batching else ""
        record.statuses[version] = VersionStatus(ModelState.READY, note, fingerprint)
        self.metrics.stats_for(record.name, str(version))
        self.metrics.track_queue(record.name, str(version), lambda: served.batcher.depth)
        self._count_loaded()
        self._emit(record, ModelEvent("reload" if previous else "load", record.name, version, "ok"))
        _log(
            logging.INFO,
            "serving %s version %d (batching %s, %d instance(s))",
            record.name,
            version,
            "on" if served.batcher.enabled else f"off: {no_batching}" if no_batching else "off",
            served.batcher.workers,
        )
        if previous is not None:
            await previous.close()
        return True

    async def _retire_removed(self, record: ModelRecord, versions: set[int]) -> None:
        """Unload versions whose folders left the repository and forget their status."""
        await self._retire(record, versions, reason="removed from the repository")
        for version in versions:
            record.statuses.pop(version, None)

    async def _retire(self, record: ModelRecord, versions: set[int], *, reason: str) -> None:
        for version in sorted(versions):
            served = record.served.get(version)
            if served is None:
                continue
            record.statuses[version] = VersionStatus(
                ModelState.UNLOADING, reason, served.fingerprint
            )
            record.served = {v: s for v, s in record.served.items() if v != version}
            self._count_loaded()
            await served.close()
            self.metrics.forget_queue(record.name, str(version))
            self.drift.detach(record.name, version)
            record.statuses[version] = VersionStatus(
                ModelState.UNAVAILABLE, reason, served.fingerprint
            )
            self._emit(record, ModelEvent("unload", record.name, version, "ok", reason))
            _log(logging.INFO, "unloaded %s version %d: %s", record.name, version, reason)

    def _emit(self, record: ModelRecord, event: ModelEvent) -> None:
        if record.cause is not None:
            event = replace(event, cause=record.cause)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a listener's failure must not fail a load or an unload
                log.exception("model event listener failed on %s", event)

    def _count_loaded(self) -> None:
        self.metrics.models_loaded.set(sum(len(r.served) for r in self._records.values()))


def _up(served: ServedVersion) -> ServedVersion:
    """`served`, or ModelNotReady while it cannot answer (its worker process is down)."""
    reason = served.down_reason()
    if reason is not None:
        raise ModelNotReady(served.name, served.version, reason=reason)
    return served


def _log(level: int, message: str, model: str, version: int, *args: object) -> None:
    """One log line about a version, with its model and version as fields (JSON logs)."""
    log.log(level, message, model, version, *args, extra={"model": model, "version": version})
