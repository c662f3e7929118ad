"""Model repository on disk: version numbering, atomic writes and verified reads.

Layout: ``REPO/NAME/VERSION/{manifest.json, model.onnx, ...}``. A version is written into a
hidden temporary folder next to its final place and renamed into place only when complete,
so a crash never leaves a half-written version that a loader or server would pick up.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

from shipyard.errors import IntegrityError, NotFoundError, PackageError, UsageError
from shipyard.package.hashing import sha256_file
from shipyard.package.manifest import MANIFEST_NAME, MODEL_FILE, FileEntry, Manifest, read_manifest

# The OpenSSF model-signing signature; it covers manifest.json, so it cannot be listed there.
SIGNATURE_FILE = "model.sig"
# Files that may sit in a version folder without being listed in the manifest.
UNLISTED_OK = frozenset({MANIFEST_NAME, SIGNATURE_FILE})
# The same rule as Manifest.name: a name is one safe folder name.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class InvalidNameError(UsageError):
    """A model name that cannot be a folder of the repository (and fails the manifest schema)."""

    exit_code = 2  # the command line was wrong: the CLI's usage-error exit status

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
            target = _inside(tmp, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            else:
                target.write_bytes(content)
            _fsync(target)
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
            _fsync(tmp / MANIFEST_NAME)
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
            _fsync_dir(model_dir)
            return final, sealed
        raise PackageError(f"{model_dir}: could not find a free version number")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def next_version(repo: Path, name: str) -> int:
    versions = list_versions(Path(repo) / name)
    return versions[-1] + 1 if versions else 1


def _inside(base: Path, rel: str) -> Path:
    target = (base / rel).resolve()
    if not target.is_relative_to(base.resolve()) or rel.startswith("/"):
        raise IntegrityError(str(base / rel), "path escapes the version folder")
    return target


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # some filesystems refuse fsync on directories; the rename has happened either way
    with contextlib.suppress(OSError):
        _fsync(path)
