"""Turn a compression config into concrete steps and apply them to an ONNX file."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from shipyard.compression.config import (
    AnyConfig,
    AnyStep,
    AutoConfig,
    DynamicInt8Config,
    Fp16Config,
    Int4WeightOnlyConfig,
    OnnxPruneConfig,
    OptimizeConfig,
    PipelineConfig,
    QuantizeAutoConfig,
    StaticInt8Config,
)
from shipyard.compression.data import Dataset
from shipyard.compression.errors import CompressionConfigError
from shipyard.compression.graph import model_family, not_applicable, op_counts
from shipyard.compression.onnx_prune import prune_onnx
from shipyard.compression.optimize import optimize
from shipyard.compression.quantize import quantize

OP_NAMES = {
    "int8-dynamic": "quantize",
    "int8-static": "quantize",
    "int4": "quantize",
    "fp16": "convert",
    "prune": "prune",
    "optimize": "optimize",
}


@dataclass
class AppliedStep:
    """One step as recorded in the lineage: its op, its full config and notes."""

    config: AnyStep
    notes: list[str] = field(default_factory=list)

    @property
    def op(self) -> str:
        return OP_NAMES[self.config.method]

    def lineage_config(self) -> dict[str, Any]:
        return {**self.config.model_dump(mode="json"), "notes": list(self.notes)}


@dataclass(frozen=True)
class Candidate:
    """A named sequence of steps that becomes one version if it is kept."""

    name: str
    steps: tuple[AnyStep, ...]


def describe(steps: Sequence[AnyStep]) -> str:
    parts = []
    for step in steps:
        if isinstance(step, DynamicInt8Config | StaticInt8Config):
            detail = "per-channel" if step.per_channel else "per-tensor"
            parts.append(f"{step.method} ({detail})")
        elif isinstance(step, OnnxPruneConfig):
            parts.append(f"prune {step.sparsity:.0%}")
        elif isinstance(step, OptimizeConfig):
            parts.append(f"optimize {step.level}")
        else:
            parts.append(step.method)
    return " + ".join(parts)


def choose_quantization(model: onnx.ModelProto, *, has_calibration: bool) -> AnyStep:
    """--quantize auto: static int8 for Conv-heavy models with calibration data, else dynamic."""
    if model_family(model) == "cnn" and has_calibration:
        return StaticInt8Config()
    return DynamicInt8Config()


def plan(config: AnyConfig, model: onnx.ModelProto, *, has_calibration: bool) -> list[Candidate]:
    """The candidates a config stands for: one for a plain config, several for `auto`."""
    if isinstance(config, QuantizeAutoConfig):
        step = choose_quantization(model, has_calibration=has_calibration)
        return [Candidate(describe([step]), (step,))]
    if isinstance(config, PipelineConfig):
        return [Candidate(describe(config.steps), tuple(config.steps))]
    if isinstance(config, AutoConfig):
        return auto_candidates(config, model, has_calibration=has_calibration)
    return [Candidate(describe([config]), (config,))]


def auto_candidates(
    config: AutoConfig, model: onnx.ModelProto, *, has_calibration: bool
) -> list[Candidate]:
    """Candidates that can apply to this model, cheapest to try first."""
    counts = op_counts(model)
    dense = counts.get("MatMul", 0) + counts.get("Gemm", 0)
    steps: list[tuple[AnyStep, ...]] = []
    if dense:  # dynamic int8 covers MatMul/Gemm only; on a Conv-only model it changes nothing
        steps.append((DynamicInt8Config(per_channel=False),))
        steps.append((DynamicInt8Config(per_channel=True),))
    if has_calibration and (dense or counts.get("Conv", 0)):
        steps.append((StaticInt8Config(),))
    if config.target == "gpu":
        steps.append((Fp16Config(),))
    if config.prune_sparsity and dense:
        steps.append(
            (OnnxPruneConfig(sparsity=config.prune_sparsity), DynamicInt8Config(per_channel=True))
        )
    if not steps:
        raise not_applicable(
            "auto",
            "MatMul or Gemm (nor Conv with calibration data) for its int8 candidates, and no "
            "GPU target was asked",
            model,
        )
    return [Candidate(describe(s), s) for s in steps]


def apply_steps(
    model_in: Path,
    model_out: Path,
    steps: Sequence[AnyStep],
    *,
    calibration: Dataset | None = None,
) -> list[AppliedStep]:
    """Apply `steps` in order, each reading the previous one's file; the last writes model_out."""
    applied: list[AppliedStep] = []
    with tempfile.TemporaryDirectory(prefix="shipyard-steps-") as tmp:
        source = model_in
        for index, step in enumerate(steps):
            target = model_out if index == len(steps) - 1 else Path(tmp) / f"step{index}.onnx"
            notes = apply_one(source, target, step, calibration=calibration)
            applied.append(AppliedStep(config=step, notes=notes))
            source = target
        if not steps:
            shutil.copyfile(model_in, model_out)
    return applied


def apply_one(
    model_in: Path, model_out: Path, step: AnyStep, *, calibration: Dataset | None
) -> list[str]:
    if isinstance(step, OnnxPruneConfig):
        return prune_onnx(model_in, model_out, step)
    if isinstance(step, OptimizeConfig):
        return optimize(model_in, model_out, step)
    if isinstance(step, DynamicInt8Config | StaticInt8Config | Int4WeightOnlyConfig | Fp16Config):
        return quantize(model_in, model_out, step, calibration=calibration)
    raise CompressionConfigError(f"unknown step {step!r}")
