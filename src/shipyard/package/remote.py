"""Model repositories on object storage (`s3://bucket/prefix`): mirror into a local cache, upload.

The server never reads a bucket directly: `sync` mirrors the remote repository into a local
folder and the usual scan, verify (hashes, signature) and load path serves from there, so a
remote version is checked exactly as a local one. Object stores have no rename, so the
atomic-publish rule is kept by order and by checking: a writer (`upload_version`, what
`shipyard pack/import --repo s3://...` use) uploads every file first and `manifest.json`
last, and `sync` takes a remote version only when its manifest is there and every file it
lists is there with the listed size. Such a version is downloaded into a hidden folder of the
cache and renamed into place when complete; a file whose size and ETag did not change is
hard-linked from the cached copy, never downloaded again. A remote version that is only
partly there (being written or rewritten) leaves its cached copy, if any, as it was; one with
no objects left is removed from the cache, and so is a model with none.

The client is `s3fs` (the `s3` extra), on botocore's usual configuration: credentials from
AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY(/AWS_SESSION_TOKEN), AWS_PROFILE and ~/.aws/credentials
and ~/.aws/config, or an instance role; the endpoint of an S3-compatible store from
AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (or `endpoint_url` in the profile).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.errors import NotFoundError, UsageError
from shipyard.package import swap
from shipyard.package.manifest import MANIFEST_NAME
from shipyard.package.store import InvalidNameError, check_name, list_versions

log = logging.getLogger("shipyard.package.remote")

SCHEMES = ("s3://",)
MODEL_CONFIG = "model.toml"  # serving.model_config.MODEL_CONFIG_FILE (kept free of serving)
STATE_FILE = ".remote-state.json"
FileMark = tuple[int, str]
"""(size, ETag) of one remote object: what decides whether it changed."""


class RemoteError(UsageError):
    """A remote repository that cannot be used: client missing, no bucket, access refused."""


def is_remote(location: str | Path) -> bool:
    """True for an object-storage URL (`s3://...`); a Path never is one."""
    return isinstance(location, str) and location.startswith(SCHEMES)


def repository_location(value: Any) -> Any:
    """A repository argument as a Path, or kept as the URL string when it is one
    (`Path("s3://b/m")` would fold the `//`)."""
    if isinstance(value, str) and not is_remote(value):
        return Path(value)
    return value


def default_cache_root() -> Path:
    """$XDG_CACHE_HOME/shipyard/remote, else ~/.cache/shipyard/remote."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shipyard" / "remote"


def cache_folder(url: str, root: Path | None = None) -> Path:
    """The cache folder of one remote repository: ROOT/<first 16 hex of sha256(url)>."""
    key = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return (root or default_cache_root()) / key


@dataclass
class RemoteRepository:
    """One `s3://bucket/prefix` and its client; every call maps client errors to one line."""

    url: str
    fs: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not is_remote(self.url):
            raise RemoteError(f"{self.url}: not an s3:// URL")
        self.root = self.url.split("://", 1)[1].strip("/")
        self.bucket = self.root.split("/", 1)[0]
        if not self.bucket:
            raise RemoteError(f"{self.url}: no bucket in the URL (s3://BUCKET/PREFIX)")
        if self.fs is None:
            self.fs = _filesystem()

    def check(self) -> None:
        """RemoteError unless the bucket exists and the credentials may list it."""
        with self._errors(self.url):
            self.fs.ls(self.bucket, refresh=True)

    def listing(self) -> dict[str, FileMark]:
        """Every object under the prefix: path relative to it -> (size, ETag)."""
        with self._errors(self.url):
            found = self.fs.find(self.root, detail=True, refresh=True) if self.root else {}
        marks = {}
        for key, info in found.items():
            if info.get("type") == "directory":
                continue
            rel = key[len(self.root) :].lstrip("/")
            if rel:
                marks[rel] = (int(info.get("size") or 0), str(info.get("ETag", "")))
        return marks

    def read(self, rel: str) -> bytes:
        with self._errors(f"{self.url}/{rel}"):
            data: bytes = self.fs.cat_file(f"{self.root}/{rel}")
        return data

    def download(self, rel: str, target: Path) -> None:
        with self._errors(f"{self.url}/{rel}"):
            self.fs.get_file(f"{self.root}/{rel}", str(target))

    def upload(self, source: Path, rel: str) -> None:
        with self._errors(f"{self.url}/{rel}"):
            self.fs.put_file(str(source), f"{self.root}/{rel}")

    def versions(self, name: str, listing: dict[str, FileMark] | None = None) -> list[int]:
        """Version numbers of `name` with any object (complete or not), ascending."""
        marks = self.listing() if listing is None else listing
        found = set()
        for rel in marks:
            parts = rel.split("/")
            if len(parts) > 2 and parts[0] == name and _is_version(parts[1]):
                found.add(int(parts[1]))
        return sorted(found)

    @contextlib.contextmanager
    def _errors(self, where: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError as exc:
            if "bucket" in str(exc).lower():
                raise RemoteError(f"{where}: bucket {self.bucket!r} does not exist") from None
            raise NotFoundError(f"{where}: no such object") from None
        except PermissionError as exc:
            raise RemoteError(
                f"{where}: access refused ({_first_line(exc)}); check the credentials "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials)"
            ) from None
        except (OSError, ValueError) as exc:
            raise RemoteError(f"{where}: {_first_line(exc)}") from None
        except Exception as exc:
            # botocore's own (NoCredentialsError, EndpointConnectionError, ...), not imported
            if type(exc).__module__.split(".")[0] not in ("botocore", "aiobotocore", "s3fs"):
                raise
            raise RemoteError(f"{where}: {_first_line(exc)}") from None


def _filesystem() -> Any:
    try:
        import s3fs
    except ImportError:
        raise RemoteError(
            "s3:// repositories need the s3 extra: pip install 'shipyard[s3]'"
        ) from None
    # no listing cache: every sync must see what the bucket holds now
    return s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _is_name(part: str) -> bool:
    try:
        check_name(part)
    except InvalidNameError:
        return False
    return True


def _is_version(part: str) -> bool:
    return part.isdigit() and not part.startswith("0")


def _visible(rel: str) -> bool:
    """No hidden part: skips temp objects, and `..` can never lead out of the cache."""
    return not any(p.startswith(".") for p in rel.split("/"))


# -- mirroring into the cache ------------------------------------------------------------


@dataclass
class SyncReport:
    """What one sync changed in the cache (for logs and tests)."""

    downloaded: list[str] = field(default_factory=list)
    """Files fetched (repository-relative); unchanged ones are linked, not listed here."""
    placed: list[str] = field(default_factory=list)
    """Versions (NAME/VERSION) added or replaced in the cache."""
    removed: list[str] = field(default_factory=list)
    """Versions and models removed from the cache (gone from the bucket)."""
    incomplete: list[str] = field(default_factory=list)
    """Remote versions not taken yet: no manifest.json, or a listed file missing or short."""


def sync(remote: RemoteRepository, cache: Path) -> SyncReport:
    """Make `cache` mirror the complete versions (and model.toml files) of `remote`."""
    cache.mkdir(parents=True, exist_ok=True)
    report = SyncReport()
    with swap.locked(cache):
        listing = {rel: mark for rel, mark in remote.listing().items() if _visible(rel)}
        state = _read_state(cache)
        models: dict[str, dict[int, dict[str, FileMark]]] = {}
        configs: dict[str, FileMark] = {}
        for rel, mark in listing.items():
            parts = rel.split("/", 2)
            if not _is_name(parts[0]):
                continue  # not a model folder (the same rule as a model name)
            if len(parts) == 2 and parts[1] == MODEL_CONFIG:
                configs[parts[0]] = mark
            elif len(parts) == 3 and _is_version(parts[1]):
                versions = models.setdefault(parts[0], {})
                versions.setdefault(int(parts[1]), {})[parts[2]] = mark
        for name in sorted(set(models) | set(configs)):
            model_dir = cache / name
            model_dir.mkdir(exist_ok=True)
            for stale in [*model_dir.glob(".tmp-sync-*"), *model_dir.glob(".gone-*")]:
                _remove(stale)  # left by a sync that was killed (we hold the lock)
            for version, files in sorted(models.get(name, {}).items()):
                key = f"{name}/{version}"
                if state.get(key) == files and (model_dir / str(version)).is_dir():
                    continue
                marks = _mirror_version(remote, model_dir, version, files, state.get(key), report)
                if marks is not None:
                    state[key] = marks
            _mirror_config(remote, model_dir, configs.get(name), state, report)
            for version in list_versions(model_dir):
                if version not in models.get(name, {}):
                    _remove(model_dir / str(version))
                    state.pop(f"{name}/{version}", None)
                    report.removed.append(f"{name}/{version}")
        for child in sorted(cache.iterdir()):
            if (
                child.is_dir()
                and _visible(child.name)
                and child.name not in set(models) | set(configs)
            ):
                _remove(child)
                for key in [k for k in state if k.split("/")[0] == child.name]:
                    del state[key]
                report.removed.append(child.name)
        _write_state(cache, state)
    if report.placed or report.removed:
        log.info(
            "synced %s: %d version(s) placed, %d removed, %d file(s) downloaded",
            remote.url,
            len(report.placed),
            len(report.removed),
            len(report.downloaded),
        )
    return report


def _mirror_version(
    remote: RemoteRepository,
    model_dir: Path,
    version: int,
    files: dict[str, FileMark],
    cached: dict[str, FileMark] | None,
    report: SyncReport,
) -> dict[str, FileMark] | None:
    """Download one complete remote version into place; None (cache untouched) when incomplete."""
    key = f"{model_dir.name}/{version}"
    missing = _incomplete(remote, key, files)
    if missing is not None:
        report.incomplete.append(key)
        log.debug("%s/%s not taken yet: %s", remote.url, key, missing)
        return None
    final = model_dir / str(version)
    staging = model_dir / f".tmp-sync-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        for rel, mark in sorted(files.items()):
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if cached is not None and cached.get(rel) == mark and (final / rel).is_file():
                os.link(final / rel, target)  # unchanged: the bytes already here
                continue
            remote.download(f"{key}/{rel}", target)
            report.downloaded.append(f"{key}/{rel}")
        swap.fsync_dir(staging)
        if final.exists():
            swap.exchange(staging, final)
        else:
            os.rename(staging, final)
        swap.fsync_dir(model_dir)
        report.placed.append(key)
        return files
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _incomplete(remote: RemoteRepository, key: str, files: dict[str, FileMark]) -> str | None:
    """Why the remote version is not complete yet, or None when it is."""
    if MANIFEST_NAME not in files:
        return f"no {MANIFEST_NAME} yet"
    try:
        listed = json.loads(remote.read(f"{key}/{MANIFEST_NAME}")).get("files", {})
        wanted = {rel: int(entry["size"]) for rel, entry in listed.items()}
    except (ValueError, TypeError, KeyError, AttributeError, NotFoundError):
        return f"{MANIFEST_NAME} unreadable (being written?)"
    for rel, size in sorted(wanted.items()):
        have = files.get(rel)
        if have is None:
            return f"{rel} not uploaded yet"
        if have[0] != size:
            return f"{rel} is {have[0]} bytes, the manifest says {size}"
    return None


def _mirror_config(
    remote: RemoteRepository,
    model_dir: Path,
    mark: FileMark | None,
    state: dict[str, Any],
    report: SyncReport,
) -> None:
    key = f"{model_dir.name}/{MODEL_CONFIG}"
    target = model_dir / MODEL_CONFIG
    if mark is None:
        if target.exists():
            target.unlink()
            report.removed.append(key)
        state.pop(key, None)
        return
    if state.get(key) == list(mark) and target.is_file():
        return
    tmp = model_dir / f".tmp-sync-{uuid.uuid4().hex}-{MODEL_CONFIG}"
    try:
        remote.download(key, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    state[key] = list(mark)
    report.downloaded.append(key)


def _remove(path: Path) -> None:
    """Rename out of sight first, so a scan sees the folder whole or not at all."""
    if path.name.startswith("."):  # already hidden
        aside = path
    else:
        aside = path.with_name(f".gone-{uuid.uuid4().hex}")
        os.rename(path, aside)
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def _read_state(cache: Path) -> dict[str, Any]:
    """Remote marks of what the cache holds; files: {rel: (size, etag)}, configs: [size, etag]."""
    try:
        raw = json.loads((cache / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    state: dict[str, Any] = {}
    for key, value in raw.items() if isinstance(raw, dict) else ():
        if key.endswith(f"/{MODEL_CONFIG}"):
            state[key] = value
        elif isinstance(value, dict):
            state[key] = {rel: (int(m[0]), str(m[1])) for rel, m in value.items()}
    return state


def _write_state(cache: Path, state: dict[str, Any]) -> None:
    tmp = cache / f"{STATE_FILE}.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(state, sort_keys=True), encoding="utf-8")
    os.replace(tmp, cache / STATE_FILE)


# -- writing into a remote repository --------------------------------------------------------


def next_remote_version(remote: RemoteRepository, name: str) -> int:
    """One above the highest version of `name` with any object in the bucket (1 when none)."""
    versions = remote.versions(name)
    return versions[-1] + 1 if versions else 1


def upload_version(remote: RemoteRepository, version_dir: Path, name: str, version: int) -> str:
    """Upload a local version folder as NAME/VERSION: every file, then manifest.json last.

    A reader (`sync`) takes the version only once its manifest is there with every file it
    lists, so a crash mid-upload never publishes half a version. Refused when the bucket
    already holds objects under NAME/VERSION. Returns the version's URL.
    """
    if version in remote.versions(name):
        raise UsageError(f"{remote.url}/{name}/{version}: version {version} already exists")
    files = sorted(
        p.relative_to(version_dir).as_posix() for p in version_dir.rglob("*") if p.is_file()
    )
    if MANIFEST_NAME not in files:
        raise UsageError(f"{version_dir}: no {MANIFEST_NAME}; not a version folder")
    for rel in [*(f for f in files if f != MANIFEST_NAME), MANIFEST_NAME]:
        remote.upload(version_dir / rel, f"{name}/{version}/{rel}")
    return f"{remote.url.rstrip('/')}/{name}/{version}"


def push_version(version_dir: Path, url: str) -> str:
    """Upload a verified local version byte for byte (model.sig too) under its own name and
    number: how a signed or encrypted version reaches a bucket (`shipyard push`)."""
    from shipyard.package.store import read_verified

    manifest = read_verified(version_dir)
    remote = RemoteRepository(url)
    remote.check()
    return upload_version(remote, version_dir, manifest.name, manifest.version)
