"""Model repository on disk: version numbering, verified reads and every write into it.

Layout: ``REPO/NAME/VERSION/{manifest.json, model.onnx, ...}``. A version is written into a
hidden temporary folder next to its final place and renamed into place only when complete,
so a crash never leaves a half-written version that a loader or server would pick up. A
published version is changed the same way (`rewrite_version`: copy, transform, reseal,
swap), and a reader that a swap overtakes reads again (`swap.read_stable`). Nothing else in
Shipyard writes into a model folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from shipyard.errors import IntegrityError, NotFoundError, PackageError, ShipyardError, UsageError
from shipyard.package import swap
from shipyard.package.hashing import sha256_file
from shipyard.package.manifest import MANIFEST_NAME, MODEL_FILE, FileEntry, Manifest, read_manifest

# The OpenSSF model-signing signature; it covers manifest.json, so it cannot be listed there.
SIGNATURE_FILE = "model.sig"
# Files that may sit in a version folder without being listed in the manifest.
UNLISTED_OK = frozenset({MANIFEST_NAME, SIGNATURE_FILE})
# Where compression keeps candidates over budget, beside the versions of their model.
REJECTED_DIR = ".rejected"
_REWRITE = ".rewrite-"
# The same rule as Manifest.name: a name is one safe folder name.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class InvalidNameError(UsageError):
    """A model name that cannot be a folder of the repository (and fails the manifest schema)."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"invalid model name {name!r}: use letters, digits, '_', '.', '-' "
            "(up to 128, starting with a letter or digit)"
        )


def check_name(name: str) -> str:
    """`name` if it is a valid model name; raises InvalidNameError otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidNameError(str(name))
    return name


def list_versions(model_dir: Path) -> list[int]:
    """The integer versions present under a model folder, ascending (hidden temp folders skipped)."""
    if not model_dir.is_dir():
        return []
    found = []
    for child in model_dir.iterdir():
        if child.is_dir() and child.name.isdigit() and not child.name.startswith("0"):
            found.append(int(child.name))
    return sorted(found)


def resolve_version_dir(path: Path, version: int | None = None) -> Path:
    """Accept a model folder (latest version, or `version`) or a version folder itself."""
    path = Path(path)
    if (path / MANIFEST_NAME).is_file() and version is None:
        return path
    if not path.is_dir():
        raise NotFoundError(f"{path}: no such model folder")
    versions = list_versions(path)
    if version is not None:
        if version not in versions:
            raise NotFoundError(f"{path}: version {version} not found (have {versions or 'none'})")
        return path / str(version)
    if not versions:
        raise NotFoundError(f"{path}: holds no versions (expected numbered folders like {path}/1)")
    return path / str(versions[-1])


def verify_files(version_dir: Path, manifest: Manifest) -> None:
    """Check every listed file's presence, size and sha256, and that nothing unlisted is there."""
    if MODEL_FILE not in manifest.files and not any(
        f.startswith(MODEL_FILE) for f in manifest.files
    ):
        raise IntegrityError(str(version_dir / MANIFEST_NAME), f"does not list {MODEL_FILE}")
    for rel, entry in sorted(manifest.files.items()):
        target = _inside(version_dir, rel)
        if not target.is_file():
            raise IntegrityError(str(target), "missing (listed in the manifest)")
        size = target.stat().st_size
        if size != entry.size:
            raise IntegrityError(
                str(target),
                f"size {size} bytes, manifest says {entry.size} (truncated or replaced)",
            )
        if sha256_file(target) != entry.sha256:
            raise IntegrityError(
                str(target), "sha256 does not match the manifest (file was modified)"
            )
    for child in version_dir.rglob("*"):
        if child.is_file():
            rel = child.relative_to(version_dir).as_posix()
            if rel not in manifest.files and rel not in UNLISTED_OK:
                raise IntegrityError(str(child), "not listed in the manifest (unexpected file)")


def read_verified(version_dir: Path, *, check_folder: bool = True) -> Manifest:
    """Manifest of a version after its schema, digest and every file hash were verified.

    A version in a repository (a numbered folder) must sit where its manifest says: in the
    folder named after its version, inside the folder named after its model. Hashes and a
    signature cover the bytes, not the place, so without this a signed `iris` copied to
    `fraud/1` would be served as `fraud`. `check_folder=False` skips both checks (for a
    source being imported under another name or number: `shipyard import`).
    """
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    if check_folder:
        check_placement(version_dir, manifest)
    verify_files(version_dir, manifest)
    return manifest


def check_placement(version_dir: Path, manifest: Manifest) -> None:
    """IntegrityError unless a numbered version folder matches the manifest's name and version."""
    if not version_dir.name.isdigit():
        return  # not in a repository layout (e.g. a staging folder): nothing to compare
    if str(manifest.version) != version_dir.name:
        raise IntegrityError(
            str(version_dir / MANIFEST_NAME),
            f"says version {manifest.version} but sits in folder {version_dir.name}",
        )
    folder = version_dir.absolute().parent.name
    if folder and manifest.name != folder:
        raise IntegrityError(
            str(version_dir / MANIFEST_NAME),
            f"manifest says {manifest.name!r} but sits in folder {folder!r}; "
            "use `shipyard import` to rename a package",
        )


def write_version(
    repo: Path,
    manifest: Manifest,
    files: Mapping[str, bytes | Path],
    *,
    version_given: bool,
    expected: Mapping[str, FileEntry] | None = None,
) -> tuple[Path, Manifest]:
    """Write a new version atomically; returns its folder and the sealed manifest written.

    When `version_given` is False and another writer takes the same number first, the next
    free number is used instead. With `expected` (a verified manifest's files), every file
    written must hash to its entry, so a source changed while being copied is refused
    before the version appears.
    """
    model_dir = Path(repo) / manifest.name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        entries: dict[str, FileEntry] = {}
        for rel, content in files.items():
            target = _write_new(tmp, rel, content)
            entries[rel] = FileEntry(sha256=sha256_file(target), size=target.stat().st_size)
            if expected is not None and entries[rel] != expected.get(rel):
                raise IntegrityError(
                    str(content) if isinstance(content, Path) else rel,
                    "changed while being copied (it no longer matches its verified hash)",
                )
        if expected is not None and set(expected) != set(entries):
            missing = sorted(set(expected) - set(entries))
            raise IntegrityError(str(model_dir), f"files {missing} were not copied")
        version = manifest.version
        for _attempt in range(1000):
            sealed = manifest.model_copy(update={"version": version, "files": entries}).sealed()
            (tmp / MANIFEST_NAME).write_text(sealed.to_json(), encoding="utf-8")
            swap.fsync_file(tmp / MANIFEST_NAME)
            final = model_dir / str(version)
            try:
                os.rename(tmp, final)
            except OSError as exc:
                if not final.exists():
                    raise
                if version_given:
                    raise UsageError(f"{final}: version {version} already exists") from exc
                version += 1
                continue
            swap.fsync_dir(model_dir)
            return final, sealed
        raise PackageError(f"{model_dir}: could not find a free version number")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def next_version(repo: Path, name: str) -> int:
    versions = list_versions(Path(repo) / name)
    return versions[-1] + 1 if versions else 1


Transform = Callable[[Path, Manifest], Manifest]
"""(staged folder, its verified manifest) -> the new manifest; `files` is recomputed after."""


def rewrite_version(
    version_dir: Path,
    transform: Transform,
    *,
    remove_signature: bool = False,
    sign: Callable[[Path], object] | None = None,
) -> Manifest:
    """Change a published version so that readers see it as it was or as it becomes, never
    in between; returns the sealed manifest written.

    The version is linked into a hidden sibling folder and verified there; `transform`
    changes that copy (it may add, replace or delete files there, never write into one:
    they share their bytes with the published version), every file is hashed into its
    manifest, which is sealed, and the folder is swapped in (`swap.exchange`). A crash
    leaves the version as it was. A signed version is refused unless `remove_signature`:
    its signature covers what changes. `sign(folder)` signs the result before it is swapped
    in, so a server that requires signatures never sees it unsigned.
    """
    version_dir = Path(version_dir)
    model_dir = version_dir.parent
    with swap.locked(model_dir):
        for stale in model_dir.glob(f"{_REWRITE}{version_dir.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # an interrupted rewrite's leftovers
        if (version_dir / SIGNATURE_FILE).exists() and not remove_signature:
            raise UsageError(
                f"{version_dir} is signed and this changes its files, which would break "
                f"{SIGNATURE_FILE}; pass --remove-signature and sign again afterwards"
            )
        staging = model_dir / f"{_REWRITE}{version_dir.name}-{uuid.uuid4().hex}"
        try:
            swap.link_tree(version_dir, staging, skip=frozenset({SIGNATURE_FILE}))
            manifest = read_manifest(staging)
            check_placement(version_dir, manifest)
            verify_files(staging, manifest)
            linked = {rel: _identity(staging / rel) for rel in manifest.files}
            updated = transform(staging, manifest)
            if (updated.name, updated.version) != (manifest.name, manifest.version):
                raise PackageError(f"{version_dir}: a rewrite cannot rename or renumber it")
            swap.remove_empty_dirs(staging)
            entries = {}
            for child in sorted(staging.rglob("*")):
                rel = child.relative_to(staging).as_posix()
                if not child.is_file() or rel in UNLISTED_OK:
                    continue
                same = rel in linked and _identity(child) == linked[rel]
                entries[rel] = (
                    manifest.files[rel]
                    if same
                    else FileEntry(sha256=sha256_file(child), size=child.stat().st_size)
                )
            sealed = updated.model_copy(update={"files": entries}).sealed()
            put_file(staging, MANIFEST_NAME, sealed.to_json().encode())
            if sign is not None:
                sign(staging)
            swap.fsync_dir(staging)
            swap.exchange(staging, version_dir)
            swap.fsync_dir(model_dir)
            return sealed
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # after the swap: the old version


def copy_version(source: Path, dest: Path, *, replace: bool) -> Manifest:
    """Copy a verified version byte for byte to `dest` (a version folder of a repository).

    Copied into a hidden sibling, verified, then renamed into place (swapped in over an
    existing `dest` when `replace`). A `dest` already holding the same version is kept.
    """
    manifest = read_verified(source, check_folder=False)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with swap.locked(dest.parent):
        if dest.exists():
            if _digest_or_none(dest) == manifest.digest:
                return manifest
            if not replace:
                raise UsageError(
                    f"{dest}: already holds a different {manifest.name} version; remove it, "
                    "use an empty repository, or pass replace=True"
                )
        staging = dest.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            shutil.copytree(source, staging)
            if read_verified(staging, check_folder=False).digest != manifest.digest:
                raise IntegrityError(str(source), "changed while being copied")
            if dest.exists():
                swap.exchange(staging, dest)
            else:
                os.rename(staging, dest)
            swap.fsync_dir(dest.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return read_verified(dest)


def keep_rejected(model_dir: Path, stamp: str, files: Mapping[str, bytes | Path]) -> Path:
    """Write `files` to `model_dir/.rejected/stamp/` atomically (a hidden folder: no
    repository or server takes it for a version); returns that folder."""
    rejected = model_dir / REJECTED_DIR
    rejected.mkdir(parents=True, exist_ok=True)
    tmp = rejected / f".tmp-{stamp}"
    tmp.mkdir()
    try:
        for rel, content in files.items():
            _write_new(tmp, rel, content)
        final = rejected / stamp
        os.rename(tmp, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def place_file(version_dir: Path, name: str, produce: Callable[[Path], object]) -> Path:
    """Add or replace one file the manifest does not list (`model.sig`) in a published version:
    `produce(tmp)` writes it beside the version folder (never inside it while the version is
    read, e.g. hashed for signing), then it is renamed in, under the model's rewrite lock, with
    the manifest's permissions. Readers see the version without it or with all of it."""
    version_dir = Path(version_dir)
    staging = version_dir.name.startswith(_REWRITE)  # a rewrite's private copy: it holds the lock
    with contextlib.nullcontext() if staging else swap.locked(version_dir.parent):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}-", dir=version_dir.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            produce(tmp)
            shutil.copymode(version_dir / MANIFEST_NAME, tmp)
            swap.fsync_file(tmp)
            os.replace(tmp, version_dir / name)
            swap.fsync_dir(version_dir)
        finally:
            tmp.unlink(missing_ok=True)
    return version_dir / name


def put_file(folder: Path, rel: str, content: bytes) -> None:
    """Replace (or create) `folder/rel` atomically: temp file, fsync, rename; the file's mode
    is kept. For transforms: a file in a staged version is replaced, never written into."""
    target = _inside(folder, rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".put-{uuid.uuid4().hex}-{target.name}")
    try:
        with tmp.open("xb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o7777)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _write_new(folder: Path, rel: str, content: bytes | Path) -> Path:
    """Write one file of a folder being built (copied from `content` when it is a path)."""
    target = _inside(folder, rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, Path):
        shutil.copyfile(content, target)
    else:
        target.write_bytes(content)
    swap.fsync_file(target)
    return target


def _identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _digest_or_none(version_dir: Path) -> str | None:
    try:
        return read_verified(version_dir).digest
    except ShipyardError:
        return None


def _inside(base: Path, rel: str) -> Path:
    target = (base / rel).resolve()
    if not target.is_relative_to(base.resolve()) or rel.startswith("/"):
        raise IntegrityError(str(base / rel), "path escapes the version folder")
    return target
