"""A served model version, and the states versions go through in the repository index.

READY: serving. LOADING: being verified, opened and warmed up. UNLOADING: refusing new
requests while the ones holding it finish. UNAVAILABLE: not serving, with the reason
(failed to load, not selected by the version policy, unloaded by request, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from shipyard.model import Model
from shipyard.serving.batching import Batcher
from shipyard.serving.errors import ModelLoadError
from shipyard.serving.isolation import ProcessRuntime
from shipyard.serving.model_config import ModelConfig
from shipyard.serving.ray_pool import RayRuntime
from shipyard.serving.repository import Fingerprint
from shipyard.serving.version_config import VersionConfig

if TYPE_CHECKING:
    from shipyard.serving.calls import CallContext
    from shipyard.serving.request_checks import Signature
    from shipyard.serving.rollout import Rollout
    from shipyard.serving.traffic import FailoverWatch


class ModelState(StrEnum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


@dataclass(frozen=True)
class VersionStatus:
    state: ModelState
    reason: str = ""
    fingerprint: Fingerprint | None = None
    failed: bool = False
    """True when loading this fingerprint failed (not retried until the files change)."""


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index."""

    name: str
    version: int | None
    state: ModelState
    reason: str


class ServedVersion:
    """A loaded, warmed model version taking traffic through its batcher."""

    def __init__(
        self,
        model: Model,
        *,
        config: ModelConfig,
        resolved: VersionConfig,
        batcher: Batcher,
        fingerprint: Fingerprint,
    ) -> None:
        self.model = model
        self.label = str(model.version)
        """The version number as responses and metric labels give it."""
        self.output_names = tuple(o.name for o in model.outputs)
        """The model's outputs, in order (checked against each request's)."""
        self.config = config
        """The model.toml it was loaded with (a changed one reloads it)."""
        self.resolved = resolved
        """That config over the server's settings, merged once at load."""
        self.limits = resolved.limits
        self.decode_limits = resolved.decode_limits
        self.batcher = batcher
        self.fingerprint = fingerprint
        self.leases = 0
        self.closing = False
        self.failed_over: str | None = None
        """Why unversioned traffic left this version (`traffic`), None while it takes it."""
        self.failover: FailoverWatch | None = None
        self.accepted_inputs: set[Signature] = set()
        """Input signatures its checks passed unchanged (`request_checks.validated`)."""
        self._idle = asyncio.Event()
        self._idle.set()
        runtime = model.runtime
        self._remote = runtime if isinstance(runtime, ProcessRuntime | RayRuntime) else None
        """The runtime when it can be down (another process), else None: checked per request."""

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> int:
        return self.model.version

    def down_reason(self) -> str | None:
        """Why this loaded version cannot answer right now (its worker process is dead or
        restarting: isolation = "process"), or None."""
        return None if self._remote is None else self._remote.down

    @contextlib.contextmanager
    def leased(self) -> Iterator[ServedVersion]:
        """Hold this version for one request (it is not closed meanwhile)."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def acquire(self) -> None:
        self.leases += 1
        self._idle.clear()

    def release(self) -> None:
        self.leases -= 1
        if self.leases == 0:
            self._idle.set()

    async def close(self) -> None:
        """Wait for the requests holding this version, then free its workers and session."""
        self.closing = True
        await self._idle.wait()
        await self.batcher.close()
        if is_remote_runtime(self.model.runtime):
            await asyncio.to_thread(self.model.close)  # waits for its worker or replicas
        else:
            self.model.close()


def is_remote_runtime(runtime: object) -> bool:
    """Whether the runtime runs elsewhere (a worker process, Ray replicas): it has `down`,
    and closing it waits for other processes."""
    return isinstance(runtime, ProcessRuntime | RayRuntime)


@dataclass(frozen=True)
class ModelEvent:
    """A version was loaded, reloaded or unloaded (`ok`), or a load or reload `failed`."""

    kind: str
    """"load", "reload" (a served version replaced by its changed files) or "unload"."""
    model: str
    version: int
    outcome: str
    detail: str = ""
    cause: CallContext | None = None
    """The call an explicit load or unload ran for (None: the repository or start-up)."""


@dataclass
class ModelRecord:
    """What the manager knows of one model: its config, version states and served versions."""

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
    cause: CallContext | None = None
    """While an explicit load or unload holds the lock: the call it runs for."""
    rollout: Rollout | None = None
    """The candidate on trial from the model.toml's [rollout], with its phase and evidence."""

    @contextlib.asynccontextmanager
    async def locked(self, cause: CallContext | None = None) -> AsyncIterator[None]:
        """Hold `lock`; the model events emitted inside name `cause` (None: no call)."""
        async with self.lock:
            self.cause = cause
            try:
                yield
            finally:
                self.cause = None

    def index_entries(self) -> list[IndexEntry]:
        """The model's rows of the repository index (one without a version if it has none)."""
        entries: list[IndexEntry] = []
        if not self.statuses:
            reason = self.config_error or "no versions on disk"
            entries.append(IndexEntry(self.name, None, ModelState.UNAVAILABLE, reason))
        for version, status in sorted(self.statuses.items()):
            reason = status.reason
            if self.config_error and status.state is ModelState.READY:
                reason = f"serving with the previous config; {self.config_error}"
            served = self.served.get(version)
            if served is not None and served.failed_over is not None:
                reason = "; ".join(r for r in (reason, served.failed_over) if r)
            entries.append(IndexEntry(self.name, version, status.state, reason))
        return entries

    def why_not_ready(self) -> str:
        """Why no version serves: the config's error, else every version's reason."""
        if self.config_error:
            return self.config_error
        reasons = [
            f"version {v} {s.state.value}: {s.reason}"
            for v, s in sorted(self.statuses.items())
            if s.reason
        ]
        return "; ".join(reasons) or "no version is loaded"

    def load_failure(self) -> ModelLoadError | None:
        """After an explicit load: why it failed, or None when it got everything it wanted.

        Something may serve, but a load that did not get the newest version (or a new
        model.toml, or a reload) is still a failed load: answering {} hid it (Triton: 400).
        """
        if not self.served:
            reasons = [
                f"version {v}: {s.reason}" for v, s in sorted(self.statuses.items()) if s.failed
            ]
            return ModelLoadError(self.name, [self.config_error] if self.config_error else reasons)
        newest = max(self.served)
        missed = [
            f"version {v}: {s.reason}"
            for v, s in sorted(self.statuses.items())
            if s.failed and v > newest
        ]
        missed += [f"version {v}: {self.statuses[v].reason}" for v in sorted(self.failed_reloads)]
        if self.config_error:
            missed.append(self.config_error)
        if not missed:
            return None
        serving = ", ".join(str(v) for v in sorted(self.served))
        return ModelLoadError(self.name, [*missed, f"still serving version(s) {serving}"])
