"""Even out long-lived HTTP connections over the `--workers` group.

`SO_REUSEPORT` spreads *new* connections over the workers by a hash of their addresses,
which is even only over many connections: the few long-lived keep-alive connections of a
load balancer, a client pool or a benchmark land unevenly (32 connections were seen split
21/11, 16/16 and 9/23 in three runs), and the busier worker's clients wait longer for as
long as their connections live.

Each worker publishes how many HTTP connections it holds in its slot of a small file the
supervisor creates in the group's metrics folder (one signed 64-bit integer per worker,
shared memory through `mmap`; `NOT_LISTENING` while a worker starts, drains or is dead).
At the start of each request a worker that holds more than its share, the ceiling of the
group's total over the listening workers, answers that request in full with
`Connection: close`: the client opens a new connection, which the kernel hashes again.
A worker never sheds below its share, never while it is the only one listening, and a
connection it has told to close no longer counts as its own, so a surplus is shed one
connection at a time. Clients see an ordinary HTTP/1.1 close after a complete response
(RFC 9112, section 9.6), which every HTTP client handles by reconnecting; no request is
cut or retried.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The group's metrics folder, which the supervisor names to each worker."""
SLOTS_FILE = "connections.bin"
"""The slots' file in the group's metrics folder."""
NOT_LISTENING = -1
"""A slot's value while its worker does not accept connections."""
_SLOT = 8


def create_slots(folder: Path, count: int) -> Path:
    """The supervisor's part: the slots' file for `count` workers, none listening yet."""
    path = folder / SLOTS_FILE
    path.write_bytes(NOT_LISTENING.to_bytes(_SLOT, "little", signed=True) * count)
    return path


def mark_not_listening(folder: Path, index: int) -> None:
    """The supervisor's part when worker `index` died: it holds no connections any more."""
    path = folder / SLOTS_FILE
    if path.exists():
        with open(path, "r+b") as f:
            f.seek(index * _SLOT)
            f.write(NOT_LISTENING.to_bytes(_SLOT, "little", signed=True))


class ConnectionShares:
    """One worker's view of the slots: its own count, and whether it holds over its share."""

    def __init__(self, path: Path, index: int) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self._slots = memoryview(self._map).cast("q")
        if not 0 <= index < len(self._slots):
            raise ValueError(f"worker index {index} outside the {len(self._slots)} slots")
        self.index = index
        self.held = 0
        """HTTP connections this worker holds, less those it has told to close."""
        self.listening = False

    def start_listening(self) -> None:
        self.listening = True
        self._slots[self.index] = self.held

    def stop_listening(self) -> None:
        self.listening = False
        self._slots[self.index] = NOT_LISTENING

    def opened(self) -> None:
        self.held += 1
        if self.listening:
            self._slots[self.index] = self.held

    def closed(self) -> None:
        """A connection not told to close (`shed`) is gone."""
        self.held -= 1
        if self.listening:
            self._slots[self.index] = self.held

    def over_share(self) -> bool:
        """True when this worker holds more connections than its share of the group's."""
        if not self.listening:
            return False
        total = live = 0
        for held in self._slots:
            if held >= 0:
                total += held
                live += 1
        # held > ceil(total / live), in integers
        return live > 1 and self.held * live > total + live - 1

    def shed(self) -> None:
        """One connection has been told to close: it no longer counts as this worker's."""
        self.closed()

    def close(self) -> None:
        self._slots.release()
        self._map.close()


def group_shares(index: int) -> ConnectionShares:
    """Worker `index`'s shares in the slots' file of its group's metrics folder."""
    return ConnectionShares(Path(os.environ[METRICS_ENV]) / SLOTS_FILE, index)
