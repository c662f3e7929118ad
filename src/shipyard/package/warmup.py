"""The warm-up sample a version carries: the inputs it was checked with at pack time.

Like Triton's model warm-up files, but made from the sample itself: a plain `.npz` (no
pickle; strings as numpy unicode arrays), listed and hashed in the manifest like every file,
capped in size. The server warms a version with it, `shipyard inspect` builds an example
request from it, and compression can measure against it. A sample Shipyard made up (no
sample given) is kept too, marked as synthesized: it is known to run.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shipyard.errors import IntegrityError
from shipyard.package.tensorspec import TensorSpec

WARMUP_FILE = "samples/warmup.npz"
MAX_ROWS = 8
"""At most this many rows (along the batch dim) are kept."""
MAX_BYTES = 4 * 1024 * 1024
"""A sample larger than this after trimming rows is not stored."""


class WarmupSample(BaseModel):
    """Recorded in the manifest: where the sample is and where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str = WARMUP_FILE
    rows: int | None = Field(default=None, ge=1)
    """Rows along the batch dim (None when no input has one)."""
    synthesized: bool = False
    """True when Shipyard made the values up (no sample was given at pack time)."""


def encode_sample(
    sample: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], *, synthesized: bool
) -> tuple[bytes, WarmupSample] | None:
    """The .npz bytes and manifest entry for a sample, or None when it cannot be kept small."""
    arrays = {name: _storable(np.asarray(value)) for name, value in sample.items()}
    if set(arrays) != {s.name for s in specs}:
        return None
    batched = {s.name for s in specs if s.batched and arrays[s.name].ndim > 0}
    counts = {arrays[n].shape[0] for n in batched}
    rows = min(counts.pop(), MAX_ROWS) if len(counts) == 1 else None
    while True:
        trimmed = {n: (a[:rows] if rows and n in batched else a) for n, a in arrays.items()}
        data = _npz(trimmed)
        if len(data) <= MAX_BYTES:
            return data, WarmupSample(rows=rows, synthesized=synthesized)
        if not rows or rows == 1:
            return None
        rows //= 2


def read_sample(version_dir: Path, entry: WarmupSample) -> dict[str, np.ndarray]:
    """The stored sample (its hash was verified with the rest of the version)."""
    path = version_dir / entry.file
    try:
        with np.load(path, allow_pickle=False) as loaded:
            return {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError) as exc:
        raise IntegrityError(str(path), f"not a readable warm-up sample ({exc})") from exc


def _storable(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "OS":
        return array
    flat = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in array.ravel()]
    return np.array(flat, dtype=np.str_).reshape(array.shape)


def _npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """What np.savez_compressed writes, without its keyword clashes (an input named 'file')."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()
