"""Reference profiles in and out: data files read, a version's stored profile read and added.

What a profile holds and how it is built: shipyard.package.profile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shipyard.errors import IntegrityError, UsageError
from shipyard.package.dtypes import numpy_dtype
from shipyard.package.hashing import sha256_bytes
from shipyard.package.profile import (
    CHUNK_ROWS,
    DEFAULT_BINS,
    DEFAULT_TOP_K,
    PROFILE_FILE,
    Profile,
    ProfileRef,
    build_profile,
    row_count,
)
from shipyard.package.tensorspec import TensorSpec

if TYPE_CHECKING:
    from shipyard.package.manifest import Manifest


def read_profile(version_dir: Path, ref: ProfileRef, sha256: str) -> Profile:
    """The stored profile, re-hashed on the bytes parsed (a swap after verification fails)."""
    path = version_dir / ref.file
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise IntegrityError(str(path), f"cannot read the reference profile ({exc})") from exc
    if sha256_bytes(raw) != sha256:
        raise IntegrityError(str(path), "sha256 does not match the manifest (file was modified)")
    try:
        return Profile.model_validate_json(raw)
    except ValueError as exc:
        raise IntegrityError(str(path), f"not a valid reference profile ({exc})") from exc


def read_data(path: Path, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Reference inputs from `.npz` (keyed by input name), `.npy` (one-input models),
    `.csv` or `.parquet` (a column per input; a one-input table model [N, F] may instead
    take F columns, stacked in file order)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise UsageError(f"{path}: reference data file not found")
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    elif suffix == ".npy":
        if len(specs) != 1:
            raise UsageError(f"{path}: a .npy file holds one tensor; the model takes {len(specs)}")
        arrays = {specs[0].name: np.load(path, allow_pickle=False)}
    elif suffix in (".csv", ".parquet"):
        arrays = _table(path, specs)
    else:
        raise UsageError(f"{path}: reference data must be .npz, .npy, .csv or .parquet")
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise UsageError(f"{path}: has no data for input(s) {missing} (found {sorted(arrays)})")
    return as_model_inputs(specs, arrays)


def as_model_inputs(
    specs: Sequence[TensorSpec], arrays: Mapping[str, object]
) -> dict[str, np.ndarray]:
    """Reference arrays cast to the inputs' dtypes (training data is often float64 where
    the model takes float32: profiled as the model will see it); other keys are dropped."""
    cast: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name in arrays:
            array = np.asarray(arrays[spec.name])
            cast[spec.name] = (
                array if spec.dtype == "str" else array.astype(numpy_dtype(spec.dtype))
            )
    return cast


def _table(path: Path, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    import pandas as pd

    try:
        frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except ImportError as exc:
        raise UsageError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from exc
    names = {s.name for s in specs}
    if len(specs) == 1 and not names & set(frame.columns):
        spec = specs[0]
        return {spec.name: frame.to_numpy()}
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name in frame.columns:
            column = frame[spec.name].to_numpy()
            arrays[spec.name] = column.reshape(-1, 1) if len(spec.shape) == 2 else column
    return arrays


def profile_outputs(
    infer: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
    inputs: Sequence[TensorSpec],
    data: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """The model's outputs on the reference data (`infer`: a Runtime's or Model's), run in
    chunks of CHUNK_ROWS rows."""
    from shipyard.runtime.base import check_inputs

    checked = check_inputs(inputs, data)
    rows = row_count(checked, [s.name for s in inputs if s.batched])
    batched = {s.name for s in inputs if s.batched}
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, rows, CHUNK_ROWS):
        feed = {
            n: (a[start : start + CHUNK_ROWS] if n in batched else a) for n, a in checked.items()
        }
        for name, value in infer(feed).items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def encode_profile(profile: Profile) -> tuple[bytes, ProfileRef]:
    """The file's bytes and the manifest entry for it."""
    ref = ProfileRef(rows=profile.rows, features=len(profile.features))
    return profile.to_json().encode("utf-8"), ref


def add_profile(
    version_dir: str | Path,
    data: str | Path | Mapping[str, np.ndarray],
    *,
    bins: int = DEFAULT_BINS,
    top_k: int = DEFAULT_TOP_K,
    replace: bool = False,
    kek: bytes | None = None,
) -> tuple[Path, Profile]:
    """Profile `data` (and the version's outputs on it) into an existing version.

    Writes `profile/reference.json` and re-seals the manifest. A signed version is refused:
    its signature covers the manifest, which this changes.
    """
    from shipyard.package.store import SIGNATURE_FILE, resolve_version_dir, rewrite_version

    version_dir = resolve_version_dir(Path(version_dir))
    if (version_dir / SIGNATURE_FILE).is_file():
        raise UsageError(
            f"{version_dir}: is signed, and the signature covers the manifest that adding a "
            f"profile changes; delete {SIGNATURE_FILE}, run this again, then re-sign with "
            "`shipyard sign`"
        )
    profile, update = profile_update(
        version_dir, data, bins=bins, top_k=top_k, replace=replace, kek=kek
    )
    rewrite_version(version_dir, update)
    return version_dir, profile


def profile_update(
    version_dir: Path,
    data: str | Path | Mapping[str, np.ndarray],
    *,
    bins: int = DEFAULT_BINS,
    top_k: int = DEFAULT_TOP_K,
    replace: bool = False,
    kek: bytes | None = None,
    source: str | None = None,
) -> tuple[Profile, Callable[[Path, Manifest], Manifest]]:
    """The profile of `data` on the verified version, and the `rewrite_version` step that
    stores it (profile/reference.json, the manifest's `profile`, a `profile` lineage step);
    other steps (a blessing) can be applied in the same rewrite."""
    from shipyard.model import load_model
    from shipyard.package.manifest import Step, now
    from shipyard.package.store import put_file

    model = load_model(version_dir, kek=kek)  # verifies every hash first
    try:
        manifest = model.manifest
        if manifest.profile is not None and not replace:
            raise UsageError(f"{version_dir}: already has a reference profile; pass --replace")
        arrays = (
            as_model_inputs(model.inputs, data)
            if isinstance(data, Mapping)
            else read_data(Path(data), model.inputs)
        )
        outputs = profile_outputs(model.infer, model.inputs, arrays)
    finally:
        model.close()
    profile = build_profile(
        manifest.inputs,
        arrays,
        outputs=manifest.outputs,
        output_data=outputs,
        bins=bins,
        top_k=top_k,
    )
    body, ref = encode_profile(profile)
    described = source or ("arrays" if isinstance(data, Mapping) else str(data))
    step = Step(op="profile", config={"data": described, "rows": profile.rows}, at=now())

    def profiled(staging: Path, current: Manifest) -> Manifest:
        if current.digest != manifest.digest:
            raise UsageError(f"{version_dir}: changed while being profiled; run this again")
        put_file(staging, PROFILE_FILE, body)
        lineage = current.lineage.model_copy(update={"steps": [*current.lineage.steps, step]})
        return current.model_copy(update={"profile": ref, "lineage": lineage})

    return profile, profiled
