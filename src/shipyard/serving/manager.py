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
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shipyard.model import Model, load_model
from shipyard.package.store import read_stable
from shipyard.serving.batching import Batcher
from shipyard.serving.drift import DriftMonitor
from shipyard.serving.errors import ModelLoadError, ModelNotFound, ModelNotReady
from shipyard.serving.metrics import Metrics
from shipyard.serving.repository import Fingerprint, ModelOnDisk, ModelRepository
from shipyard.serving.served import IndexEntry, ModelState, ServedVersion, VersionStatus
from shipyard.serving.settings import MODEL_CONFIG_FILE, ModelConfig, ServerSettings
from shipyard.serving.warmup import batching_problem, static_batching_problem, warm_up

__all__ = [
    "IndexEntry",
    "ModelEvent",
    "ModelManager",
    "ModelState",
    "ServedVersion",
    "VersionStatus",
]

log = logging.getLogger("shipyard.serving.manager")


@dataclass(frozen=True)
class ModelEvent:
    """A version was loaded, reloaded or unloaded (`ok`), or a load or reload `failed`."""

    kind: str
    """"load", "reload" (a served version replaced by its changed files) or "unload"."""
    model: str
    version: int
    outcome: str
    detail: str = ""


@dataclass
class _Record:
    name: str
    config: ModelConfig | None = None
    config_error: str | None = None
    statuses: dict[int, VersionStatus] = field(default_factory=dict)
    served: dict[int, ServedVersion] = field(default_factory=dict)
    failed_reloads: dict[int, tuple[Fingerprint, ModelConfig]] = field(default_factory=dict)
    """(files, config) a served version failed to reload with; not retried until changed."""
    unloaded_by_request: bool = False
    high_water: int = 0
    """The highest version this server has served for the model (downgrade guard)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


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
        self.drift = DriftMonitor(metrics.registry)
        """Drift trackers of the served versions (the data plane feeds them)."""
        self._records: dict[str, _Record] = {}
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

    async def load(self, name: str) -> None:
        """Load (or reload) a model: re-read its config and retry versions that failed."""
        if await asyncio.to_thread(self.repository.scan, name) is None:
            raise ModelNotFound(name)
        record = self._records.setdefault(name, _Record(name))
        record.unloaded_by_request = False
        await self._reconcile(name, force=True)
        record = self._records.get(name, record)
        if not record.served:
            reasons = [
                f"version {v}: {s.reason}" for v, s in sorted(record.statuses.items()) if s.failed
            ]
            raise ModelLoadError(name, [record.config_error] if record.config_error else reasons)
        # Something serves, but an explicit load that did not get the newest version (or a
        # new model.toml, or a reload) is still a failed load: answering {} hid it (Triton: 400).
        newest = max(record.served)
        missed = [
            f"version {v}: {s.reason}"
            for v, s in sorted(record.statuses.items())
            if s.failed and v > newest
        ]
        missed += [
            f"version {v}: {record.statuses[v].reason}" for v in sorted(record.failed_reloads)
        ]
        if record.config_error:
            missed.append(record.config_error)
        if missed:
            serving = ", ".join(str(v) for v in sorted(record.served))
            raise ModelLoadError(name, [*missed, f"still serving version(s) {serving}"])

    async def unload(self, name: str) -> None:
        """Stop serving every version of a model until it is loaded again."""
        record = self._records.get(name)
        if record is None:
            if await asyncio.to_thread(self.repository.scan, name) is None:
                raise ModelNotFound(name)
            record = self._records.setdefault(name, _Record(name))
        async with record.lock:
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
            for number in sorted(record.served, reverse=True):
                if not record.served[number].closing:
                    return record.served[number]
            raise ModelNotReady(name, reason=self._why_not_ready(record))
        served = record.served.get(version)
        if served is not None and not served.closing:
            return served
        status = record.statuses.get(version)
        if status is None:
            raise ModelNotFound(name, version)
        raise ModelNotReady(name, version, reason=status.reason or status.state.value)

    def served_versions(self, name: str) -> list[int]:
        record = self._records.get(name)
        return sorted(record.served) if record else []

    def ready(self) -> bool:
        """Started, and (strict) every model not unloaded on request has a READY version."""
        if not self.started:
            return False
        if not self.settings.strict_readiness:
            return True
        return all(r.served or r.unloaded_by_request for r in self._records.values())

    async def index(self, *, ready_only: bool = False) -> list[IndexEntry]:
        """Every model and version known or on disk, with its state and reason."""
        on_disk = await asyncio.to_thread(self.repository.model_names)
        entries: list[IndexEntry] = []
        for name in sorted(set(on_disk) | set(self._records)):
            record = self._records.get(name)
            if record is None:
                entries.append(IndexEntry(name, None, ModelState.UNAVAILABLE, "not loaded yet"))
                continue
            if not record.statuses:
                reason = record.config_error or "no versions on disk"
                entries.append(IndexEntry(name, None, ModelState.UNAVAILABLE, reason))
            for version, status in sorted(record.statuses.items()):
                reason = status.reason
                if record.config_error and status.state is ModelState.READY:
                    reason = f"serving with the previous config; {record.config_error}"
                entries.append(IndexEntry(name, version, status.state, reason))
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

    async def _reconcile(self, name: str, *, force: bool = False) -> None:
        record = self._records.setdefault(name, _Record(name))
        async with record.lock:
            disk = await asyncio.to_thread(self.repository.scan, name)
            if disk is None:
                await self._retire(record, set(record.served), reason="removed from the repository")
                if self._records.get(name) is record:
                    del self._records[name]
                return
            await self._reconcile_locked(record, disk, force=force)

    async def _reconcile_locked(self, record: _Record, disk: ModelOnDisk, *, force: bool) -> None:
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
        guard = self.settings.require_signature and not self.settings.allow_downgrade
        while True:
            wanted = set(
                config.version_policy.select([v for v in disk.versions if v not in broken])
            )
            if guard and not force and wanted and max(wanted) < record.high_water:
                self._refuse_downgrade(record, disk, wanted)
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
                if await self._load_version(record, disk, version, config):
                    record.failed_reloads.pop(version, None)
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
            if not failed:
                break
        await self._retire_removed(record, gone)
        not_selected = f"not selected by the version policy ({config.version_policy.describe()})"
        await self._retire(record, set(record.served) - wanted, reason=not_selected)
        for version in disk.versions:
            status = record.statuses.get(version)
            if version not in wanted and (status is None or not status.failed):
                record.statuses[version] = VersionStatus(ModelState.UNAVAILABLE, not_selected)
        if record.served:
            # an explicit load (force) is the operator's word: what it serves is the new mark
            top = max(record.served)
            record.high_water = top if force else max(record.high_water, top)

    def _refuse_downgrade(self, record: _Record, disk: ModelOnDisk, wanted: set[int]) -> None:
        """Keep serving what is served (even a removed folder) rather than roll back silently."""
        reason = (
            f"refused downgrade: version {max(wanted)} is older than version "
            f"{record.high_water}, which this server has served; load the model explicitly "
            "(POST /v2/repository/models/NAME/load) or serve with --allow-downgrade"
        )
        for version in sorted(wanted - set(record.served)):
            status = record.statuses.get(version)
            record.statuses[version] = VersionStatus(
                ModelState.UNAVAILABLE, reason, disk.versions.get(version)
            )
            if status is None or status.reason != reason:  # say it once, not at every scan
                self._emit(ModelEvent("load", record.name, version, "failed", reason))
                log.error(
                    "refused %s version %d: %s",
                    record.name,
                    version,
                    reason,
                    extra={"model": record.name, "version": version},
                )

    async def _load_version(
        self, record: _Record, disk: ModelOnDisk, version: int, config: ModelConfig
    ) -> bool:
        fingerprint = disk.versions[version]
        record.statuses[version] = VersionStatus(ModelState.LOADING, fingerprint=fingerprint)
        log.info(
            "loading %s version %d",
            record.name,
            version,
            extra={"model": record.name, "version": version},
        )
        try:
            model, no_batching = await asyncio.to_thread(self._open, disk, version, config)
        except Exception as exc:
            reason = str(exc) or repr(exc)
            record.statuses[version] = VersionStatus(
                ModelState.UNAVAILABLE, reason, fingerprint, failed=True
            )
            self.metrics.load_failures.labels(record.name).inc()
            kind = "reload" if version in record.served else "load"
            self._emit(ModelEvent(kind, record.name, version, "failed", reason))
            log.error(
                "refused %s version %d: %s",
                record.name,
                version,
                reason,
                extra={"model": record.name, "version": version},
            )
            return False
        served = ServedVersion(
            model,
            config=config,
            batcher=self._batcher(model, config, no_batching),
            fingerprint=fingerprint,
        )
        previous = record.served.get(version)
        record.served = {**record.served, version: served}
        note = f"batching off: {no_batching}" if no_batching else ""
        record.statuses[version] = VersionStatus(ModelState.READY, note, fingerprint)
        self.metrics.stats_for(record.name, str(version))
        self.metrics.track_queue(record.name, str(version), lambda: served.batcher.depth)
        self._count_loaded()
        self._emit(ModelEvent("reload" if previous else "load", record.name, version, "ok"))
        log.info(
            "serving %s version %d (batching %s, %d instance(s))",
            record.name,
            version,
            "on" if served.batcher.enabled else f"off: {no_batching}" if no_batching else "off",
            served.batcher.workers,
            extra={"model": record.name, "version": version},
        )
        if previous is not None:
            await previous.close()
        return True

    def _open(
        self, disk: ModelOnDisk, version: int, config: ModelConfig
    ) -> tuple[Model, str | None]:
        """Verify, open and warm up one version (on a worker thread).

        Returns the model and, when requests must not be batched along dim 0, why. Done
        again when the version was rewritten meanwhile (`shipyard encrypt`, key rotation):
        what serves is one version as written, never a mix that would fail to load.
        """
        return read_stable(
            disk.path / str(version),
            lambda: self._open_once(disk, version, config),
            discard=lambda opened: opened[0].close(),
        )

    def _open_once(
        self, disk: ModelOnDisk, version: int, config: ModelConfig
    ) -> tuple[Model, str | None]:
        model = load_model(
            disk.path,
            version=version,
            options=config.runtime or self.settings.runtime,
            public_key=self.settings.public_key,
            kek=self.kek,
        )
        mode = self.settings.warmup if config.warmup is None else config.warmup
        feed = None
        try:
            if mode:
                result = warm_up(model, strict=mode == "strict")
                feed = result.feed
                if result.warning:
                    log.warning(
                        "%s version %d: %s",
                        model.name,
                        version,
                        result.warning,
                        extra={"model": model.name, "version": version},
                    )
            wanted = config.batching_for(self.settings).enabled
            problem = static_batching_problem(model.inputs, model.outputs)
            found_by_running = False
            if problem is None and wanted is not False:
                problem = batching_problem(model, feed)
                found_by_running = problem is not None
            self.drift.attach(model, config.drift_for(self.settings))
        except Exception:
            model.close()
            raise
        if problem is not None and (wanted or found_by_running):
            log.warning(
                "%s version %d: batching turned off%s: %s",
                model.name,
                version,
                " though model.toml enables it" if wanted else "",
                problem,
                extra={"model": model.name, "version": version},
            )
        return model, problem

    def _batcher(self, model: Model, config: ModelConfig, problem: str | None) -> Batcher:
        batching = config.batching_for(self.settings)
        if problem is not None:
            batching = batching.model_copy(update={"enabled": False})
        elif batching.enabled is None:
            batching = batching.model_copy(update={"enabled": True})
        name, version = model.name, str(model.version)

        def on_batch(rows: int, requests: int, compute_ns: int) -> None:
            self.metrics.observe_batch(
                model=name, version=version, rows=rows, compute_ns=compute_ns
            )

        def run(feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
            return model.runtime.infer(feed, outputs or None)

        return Batcher(
            run,
            name=name,
            batching=batching,
            workers=config.instances or self.settings.instances,
            on_batch=on_batch,
            retry_after_s=self.settings.limits.retry_after_s,
        )

    async def _retire_removed(self, record: _Record, versions: set[int]) -> None:
        """Unload versions whose folders left the repository and forget their status."""
        await self._retire(record, versions, reason="removed from the repository")
        for version in versions:
            record.statuses.pop(version, None)

    async def _retire(self, record: _Record, versions: set[int], *, reason: str) -> None:
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
            self._emit(ModelEvent("unload", record.name, version, "ok", reason))
            log.info(
                "unloaded %s version %d: %s",
                record.name,
                version,
                reason,
                extra={"model": record.name, "version": version},
            )

    def _emit(self, event: ModelEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a listener's failure must not fail a load or an unload
                log.exception("model event listener failed on %s", event)

    def _count_loaded(self) -> None:
        self.metrics.models_loaded.set(sum(len(r.served) for r in self._records.values()))

    @staticmethod
    def _why_not_ready(record: _Record) -> str:
        if record.config_error:
            return record.config_error
        reasons = [
            f"version {v} {s.state.value}: {s.reason}"
            for v, s in sorted(record.statuses.items())
            if s.reason
        ]
        return "; ".join(reasons) or "no version is loaded"


def ceiling_problem(config: ModelConfig, settings: ServerSettings, model_dir: Path) -> str | None:
    """Why `config` (a model.toml) asks for more than the server allows; None when it fits.

    `max_instances` always bounds `instances`. With `require_signature`, model.toml is not
    covered by any signature, so it may only tighten the server's limits and queue size,
    never raise them: the server's values are then ceilings.
    """
    where = model_dir / MODEL_CONFIG_FILE
    if config.instances is not None and config.instances > settings.max_instances:
        return (
            f"{where}: instances = {config.instances} is above the server's max_instances = "
            f"{settings.max_instances}"
        )
    if not settings.require_signature:
        return None
    ceilings = settings.limits.model_dump()
    for key, value in sorted(config.limits.model_dump(exclude_none=True).items()):
        if value > ceilings[key]:
            return (
                f"{where}: limits.{key} = {value} is above the server's {ceilings[key]} "
                "(with --require-signature a model.toml may only lower limits)"
            )
    queue = config.batching.max_queue_size
    if queue is not None and queue > settings.batching.max_queue_size:
        return (
            f"{where}: batching.max_queue_size = {queue} is above the server's "
            f"{settings.batching.max_queue_size} (with --require-signature a model.toml may "
            "only lower it)"
        )
    return None
