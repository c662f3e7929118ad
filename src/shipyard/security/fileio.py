"""Small file helpers shared by the security modules: permissions and directory fsync."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from shipyard.errors import UsageError

_GROUP_OTHER_RW = 0o066


class InsecurePermissionsError(UsageError):
    """A secret file (key, token file) that group or others may read or write (exit 2)."""


def check_private(path: Path, *, what: str, st: os.stat_result | None = None) -> None:
    """Refuse a `what` file that group or others can read or write.

    A world-readable private key is a leaked key, and a world-writable token file lets any
    local user grant themselves access; both were accepted silently before. POSIX only:
    elsewhere file modes do not say who can read a file.
    """
    if os.name != "posix":
        return
    if st is None:
        try:
            st = path.stat()
        except OSError:
            return  # the caller's own read reports a missing or unreadable file
    mode = stat.S_IMODE(st.st_mode)
    if mode & _GROUP_OTHER_RW:
        who = []
        if mode & 0o060:
            who.append("group")
        if mode & 0o006:
            who.append("others")
        raise InsecurePermissionsError(
            f"{path}: {what} is readable or writable by {' and '.join(who)} "
            f"(mode {mode:04o}); restrict it with `chmod 600 {path}` and check who could "
            "have read or changed it"
        )


def copy_mode(reference: Path, target: Path) -> None:
    """Give a temp file (mkstemp creates 0600) the permissions of the file it replaces."""
    with contextlib.suppress(FileNotFoundError):
        target.chmod(stat.S_IMODE(reference.stat().st_mode))
