"""Post-training magnitude pruning of ONNX weights (initializers of MatMul/Gemm/Conv).

Each weight tensor gets the target sparsity on its own (the smallest |w| become zero).
The zeros make the file compress far better under gzip; ONNX Runtime's CPU kernels are
dense, so latency does not change. Without fine-tuning, accuracy drops quickly past ~50%.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from shipyard.compression.config import OnnxPruneConfig
from shipyard.compression.graph import initializers, not_applicable

_WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "ConvTranspose": 1}


@dataclass(frozen=True)
class PruneSummary:
    tensors: int
    elements: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.elements if self.elements else 0.0


def magnitude_mask(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """Boolean keep-mask zeroing exactly round(sparsity * size) smallest-magnitude entries."""
    drop = round(sparsity * weights.size)
    keep = np.ones(weights.size, dtype=bool)
    if drop > 0:
        order = np.argsort(np.abs(weights).reshape(-1), kind="stable")
        keep[order[:drop]] = False
    return keep.reshape(weights.shape)


def prune_weights(model: onnx.ModelProto, config: OnnxPruneConfig) -> PruneSummary:
    """Prune `model` in place; returns how many weight tensors and elements were touched."""
    inits = initializers(model)
    chosen: dict[str, onnx.TensorProto] = {}
    for node in model.graph.node:
        index = _WEIGHT_INPUT.get(node.op_type)
        if node.op_type not in config.op_types or index is None or len(node.input) <= index:
            continue
        init = inits.get(node.input[index])
        if init is None or init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        if int(np.prod(init.dims)) >= config.min_weight_elements:
            chosen[init.name] = init
    elements = zeros = 0
    for init in chosen.values():
        weights = numpy_helper.to_array(init)
        pruned = np.where(magnitude_mask(weights, config.sparsity), weights, 0).astype(
            weights.dtype
        )
        init.CopyFrom(numpy_helper.from_array(pruned, init.name))
        elements += pruned.size
        zeros += int(np.count_nonzero(pruned == 0))
    return PruneSummary(tensors=len(chosen), elements=elements, zeros=zeros)


def prune_onnx(model_in: Path, model_out: Path, config: OnnxPruneConfig) -> list[str]:
    """Write a pruned copy of `model_in`; returns notes for the lineage step.

    Raises CompressionConfigError when no weight qualifies (nothing would change)."""
    model = onnx.load(str(model_in))
    summary = prune_weights(model, config)
    if not summary.tensors:
        raise not_applicable(
            config.method,
            f"constant float {'/'.join(config.op_types)} weight of >= "
            f"{config.min_weight_elements} elements to prune",
            model,
        )
    onnx.save(model, str(model_out))
    return [
        f"pruned {summary.tensors} weight tensor(s), {summary.elements} elements to "
        f"{summary.sparsity:.1%} zeros",
        "unstructured zeros shrink the gzip size, not the latency on ONNX Runtime CPU",
    ]
