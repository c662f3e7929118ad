"""Small file helpers shared by the security modules: permissions and directory fsync."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def copy_mode(reference: Path, target: Path) -> None:
    """Give a temp file (mkstemp creates 0600) the permissions of the file it replaces."""
    with contextlib.suppress(FileNotFoundError):
        target.chmod(stat.S_IMODE(reference.stat().st_mode))


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable; some filesystems refuse fsync on folders."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
