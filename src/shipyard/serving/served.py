"""A served model version, and the states versions go through in the repository index.

READY: serving. LOADING: being verified, opened and warmed up. UNLOADING: refusing new
requests while the ones holding it finish. UNAVAILABLE: not serving, with the reason
(failed to load, not selected by the version policy, unloaded by request, ...).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum

from shipyard.model import Model
from shipyard.serving.batching import Batcher
from shipyard.serving.repository import Fingerprint
from shipyard.serving.settings import ModelConfig


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
        self, model: Model, *, config: ModelConfig, batcher: Batcher, fingerprint: Fingerprint
    ) -> None:
        self.model = model
        self.config = config
        self.batcher = batcher
        self.fingerprint = fingerprint
        self.leases = 0
        self.closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> int:
        return self.model.version

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
        self.model.close()
