"""File-system steps the store builds on: swap two folders in one step, lock a folder, fsync,
and the reader's side of a swap (`read_stable`: read again when a swap overtook the read)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from shipyard.errors import ShipyardError

T = TypeVar("T")

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h


def exchange(staging: Path, target: Path) -> None:
    """Put `staging` at `target`, and what was at `target` at `staging`.

    On Linux this is one renameat2(RENAME_EXCHANGE): `target` names the old folder, then
    the new one, and never nothing, so a repository scan cannot see the version vanish.
    Elsewhere (or on a file system without it) two renames leave `target` missing for a
    moment; a scan that falls in it sees the version removed and finds it again next time.
    """
    if _rename_exchange(staging, target):
        return
    aside = target.with_name(f".swap-{target.name}-{uuid.uuid4().hex}")
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(aside, target)
        raise
    os.rename(aside, staging)


def _rename_exchange(first: Path, second: Path) -> bool:
    if sys.platform != "linux":
        return False
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library older than glibc 2.28
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    if call(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # not offered by this file system
        return False
    raise OSError(err, os.strerror(err), str(second))


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `folder` (POSIX); rewrites of one model take turns."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the swap alone keeps readers safe
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def link_tree(source: Path, dest: Path, *, skip: frozenset[str]) -> None:
    """Recreate `source` under `dest` with hard links (copies where links are refused)."""
    dest.mkdir()
    for child in sorted(source.rglob("*")):
        rel = child.relative_to(source)
        if rel.as_posix() in skip:
            continue
        target = dest / rel
        if child.is_dir():
            target.mkdir(exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(child, target)
        except OSError:
            shutil.copy2(child, target)


def remove_empty_dirs(folder: Path) -> None:
    for child in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if child.is_dir():
            with contextlib.suppress(OSError):
                child.rmdir()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    # some filesystems refuse fsync on directories; the rename has happened either way
    with contextlib.suppress(OSError):
        fsync_file(path)


def read_stable(
    version_dir: Path,
    read: Callable[[], T],
    *,
    discard: Callable[[T], object] | None = None,
    attempts: int = 5,
) -> T:
    """`read()` of a version folder, done again when `store.rewrite_version` swapped it meanwhile:
    a read a swap overtakes may mix two versions, and fail on a hash or succeed on the mix
    (handed to `discard`); what is returned is one version as it was written."""
    for _attempt in range(attempts - 1):
        before = _folder_identity(version_dir)
        try:
            result = read()
        except (ShipyardError, OSError):
            if _folder_identity(version_dir) != before:
                continue
            raise
        if _folder_identity(version_dir) == before:
            return result
        if discard is not None:
            discard(result)
    return read()


def _folder_identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None  # mid-swap where the OS cannot exchange folders in one step
    return st.st_dev, st.st_ino, st.st_ctime_ns
