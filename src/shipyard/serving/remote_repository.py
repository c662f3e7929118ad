"""A model repository on object storage, served from its local mirror (`package.remote`).

`RemoteRepository` is a `ModelRepository` over the cache folder whose `model_names()` first
syncs the cache with the bucket (on the worker thread where the manager already scans), so
every refresh (start, each poll, SIGHUP) sees what the bucket holds, and the existing scan,
verify and load path serves it: hashes and signatures are checked on the cached copy exactly
as for a local repository. Syncs are at least `min_interval_s` apart (the repository index
lists names too, and must not list the bucket on every request). A failed sync is logged and
the cache keeps serving what it holds.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from shipyard.package.remote import RemoteRepository as Bucket
from shipyard.package.remote import SyncReport, cache_folder, sync
from shipyard.serving.repository import ModelRepository

log = logging.getLogger("shipyard.serving.manager")


class RemoteRepository(ModelRepository):
    """`s3://bucket/prefix` mirrored into `cache_root/<hash of the URL>` and read from there."""

    def __init__(
        self,
        url: str,
        *,
        cache_root: Path | None = None,
        min_interval_s: float = 1.0,
        bucket: Bucket | None = None,
    ) -> None:
        self.url = url
        self.bucket = bucket or Bucket(url)
        super().__init__(cache_folder(url, cache_root))
        self.min_interval_s = min_interval_s
        self.last_report: SyncReport | None = None
        self._lock = threading.Lock()
        self._last_sync = -float("inf")
        self._last_error: str | None = None

    def model_names(self) -> list[str]:
        self.sync_if_due()
        return super().model_names()

    def sync_if_due(self, *, force: bool = False) -> None:
        """Sync the cache unless one ran less than `min_interval_s` ago (errors are logged).

        While another sync runs (a large download), the caller reads the cache as it is
        instead of waiting: every change to the cache is one rename, and the next refresh
        sees the rest. `force` waits for it and syncs again."""
        if not self._lock.acquire(blocking=force):
            return
        try:
            if not force and time.monotonic() - self._last_sync < self.min_interval_s:
                return
            try:
                self.last_report = sync(self.bucket, self.root)
            except Exception as exc:  # the bucket, the network or the cache disk
                if str(exc) != self._last_error:  # once per distinct failure, not every poll
                    log.error("cannot sync %s (serving the cached copy): %s", self.url, exc)
                self._last_error = str(exc)
            else:
                if self._last_error is not None:
                    log.info("synced %s again", self.url)
                self._last_error = None
            self._last_sync = time.monotonic()
        finally:
            self._lock.release()
