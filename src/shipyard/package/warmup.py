"""The warm-up sample a version carries: the inputs it was checked with at pack time.

Like Triton's model warm-up files, but made from the sample itself: a plain `.npz` (no
pickle; strings as numpy unicode arrays), listed and hashed in the manifest like every file,
capped in size. The server warms a version with it, `shipyard inspect` builds an example
request from it, and compression can measure against it. A sample Shipyard made up (no
sample given) is kept too, marked as synthesized: it is known to run.
"""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shipyard.errors import IntegrityError, UsageError
from shipyard.package.tensorspec import TensorSpec

if TYPE_CHECKING:  # the manifest imports this module for WarmupSample
    from shipyard.package.manifest import Manifest

MODEL_FILE = "model.onnx"

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


# numpy parses .npy headers with ast.literal_eval, and CPython 3.11 before 3.11.8 can fail
# concurrent AST construction ("AST constructor recursion depth mismatch", gh-106905): the
# server loads versions on several threads at once, so sample reads take turns.
_NPY_LOCK = threading.Lock()


def read_sample(version_dir: Path, entry: WarmupSample) -> dict[str, np.ndarray]:
    """The stored sample (its hash was verified with the rest of the version)."""
    path = version_dir / entry.file
    try:
        with _NPY_LOCK, np.load(path, allow_pickle=False) as loaded:
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


def example_request(
    version_dir: Path, manifest: Manifest, *, rows: int = 1
) -> tuple[dict[str, Any], str]:
    """A ready-to-send V2 inference request (JSON body) and where its values came from.

    From the stored sample (its first `rows` rows), else from inputs synthesized from the
    graph (token ids inside the vocabulary, masks ones, ...).
    """
    import onnx

    from shipyard.runtime.synthesis import graph_hints, synthesize_feed

    if manifest.warmup is not None:
        feed = read_sample(version_dir, manifest.warmup)
        origin = "synthesized sample" if manifest.warmup.synthesized else "stored sample"
    elif manifest.encryption is None:
        graph = onnx.load(str(version_dir / MODEL_FILE), load_external_data=False)
        feed = synthesize_feed(manifest.inputs, graph_hints(graph), batch=rows)
        origin = "inputs synthesized from the graph"
    else:
        raise UsageError(
            f"{version_dir}: encrypted and without a stored sample; no example can be built "
            "without decrypting the model"
        )
    batched = {s.name for s in manifest.inputs if s.batched}
    tensors = []
    for spec in manifest.inputs:
        array = feed[spec.name]
        if spec.name in batched and array.ndim:
            array = array[:rows]
        flat = array.ravel()
        values = [str(v) for v in flat] if spec.dtype == "str" else flat.tolist()
        tensors.append(
            {
                "name": spec.name,
                "shape": list(array.shape),
                "datatype": spec.v2_datatype,
                "data": values,
            }
        )
    return {"inputs": tensors}, origin
