"""What every importer produces, and the check that the converted model matches the original."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from shipyard.errors import ConversionError
from shipyard.package.conversion import ConversionCheck, Tolerance


@dataclass
class Converted:
    """An importer's result: the ONNX model plus what is needed to check it.

    `expected` holds the original framework's outputs on `sample`, keyed by the ONNX output
    names they correspond to; outputs not in `expected` are not compared.
    """

    model: onnx.ModelProto
    framework: str
    framework_version: str
    converter: str
    converter_version: str
    sample: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)
    extra_files: Mapping[str, bytes | Path] = field(default_factory=dict)
    sample_synthesized: bool = False
    """True when `sample` was made up by Shipyard rather than given by the user."""
    model_path: Path | None = None
    """Where ONNX Runtime loads the model from when `model` alone cannot run it (its
    tensors live in external data files); None: `model` holds everything."""
    external_data: list[str] = field(default_factory=list)
    """The external data files (in `extra_files`, relative to model.onnx) the graph reads."""


def compare_outputs(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    *,
    samples: int,
    tolerance: Tolerance,
) -> ConversionCheck:
    """Compare original and converted outputs; raises ConversionError when out of tolerance."""
    max_abs = 0.0
    mismatch = 0.0
    problems: list[str] = []
    for name, want in expected.items():
        if name not in actual:
            problems.append(f"output {name!r} missing from the converted model")
            continue
        got = np.asarray(actual[name])
        want = np.asarray(want)
        if got.size != want.size:
            problems.append(
                f"output {name!r}: shape {list(got.shape)} vs original {list(want.shape)}"
            )
            continue
        got = got.reshape(want.shape)
        if want.dtype.kind == "f" or (want.dtype.kind in "iu" and got.dtype.kind == "f"):
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            finite = np.isfinite(diff)
            if not finite.all():
                same_nonfinite = np.array_equal(
                    np.isnan(got.astype(np.float64)), np.isnan(want.astype(np.float64))
                )
                if not same_nonfinite:
                    problems.append(f"output {name!r}: NaN/inf where the original has none")
            worst = float(diff[finite].max()) if finite.any() else 0.0
            max_abs = max(max_abs, worst)
            bound = tolerance.atol + tolerance.rtol * np.abs(want.astype(np.float64))
            if (diff[finite] > bound[finite]).any():
                problems.append(
                    f"output {name!r}: max abs diff {worst:.3g} exceeds "
                    f"atol={tolerance.atol:g} + rtol={tolerance.rtol:g}*|original|"
                )
        else:
            differ = float(np.mean(got.astype(str) != want.astype(str))) if want.size else 0.0
            mismatch = max(mismatch, differ)
            if differ > tolerance.max_mismatch:
                problems.append(
                    f"output {name!r}: {differ:.1%} of elements differ "
                    f"(allowed {tolerance.max_mismatch:.1%})"
                )
    if problems:
        raise ConversionError(
            "converted model does not match the original: "
            + "; ".join(problems)
            + " (loosen with --atol/--rtol/--max-mismatch only if the difference is acceptable)"
        )
    return ConversionCheck(
        samples=samples,
        compared_outputs=sorted(expected),
        max_abs_diff=max_abs,
        mismatch=mismatch,
        tolerance=tolerance,
        passed=True,
    )
