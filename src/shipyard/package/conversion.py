"""The conversion check a manifest records: how the ONNX model compared to the original."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Tolerance(BaseModel):
    """How close the converted model must come to the original on the sample inputs.

    Float outputs pass when |converted - original| <= atol + rtol * |original| everywhere;
    non-float outputs (class labels) pass when at most `max_mismatch` of their elements differ.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    atol: float = Field(default=1e-4, ge=0)
    rtol: float = Field(default=1e-3, ge=0)
    max_mismatch: float = Field(default=0.0, ge=0, le=1)


class ConversionCheck(BaseModel):
    """Recorded in the manifest: how the converted model compared to the original."""

    model_config = ConfigDict(extra="forbid")

    samples: int
    compared_outputs: list[str]
    max_abs_diff: float
    mismatch: float
    tolerance: Tolerance
    passed: bool
