"""Small ONNX graph helpers: op counts, weight census by op type, Gemm → MatMul rewrite,
ONNX-ML detection (what a method cannot touch) and opset-import clean-up."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from shipyard.compression.errors import CompressionConfigError

Family = Literal["transformer", "cnn", "other"]


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the main graph holds (domain-qualified when not ai.onnx)."""
    counts: Counter[str] = Counter()
    for node in model.graph.node:
        domain = node.domain if node.domain not in ("", "ai.onnx") else ""
        counts[f"{domain}.{node.op_type}" if domain else node.op_type] += 1
    return dict(counts)


def default_domain_ops(model: onnx.ModelProto) -> set[str]:
    """Op types of the main graph's nodes in the default (ai.onnx) domain."""
    return {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}


def ml_operators(model: onnx.ModelProto) -> list[str]:
    """Op types from the ai.onnx.ml domain (scikit-learn converters emit these: Scaler,
    LinearClassifier, TreeEnsemble …); quantizers and fp16 converters leave them alone."""
    return sorted({n.op_type for n in model.graph.node if n.domain == "ai.onnx.ml"})


def not_applicable(method: str, lacking: str, model: onnx.ModelProto) -> CompressionConfigError:
    """The error for a method that would leave this model unchanged, saying why."""
    message = f"{method} does not apply to this model: it has no {lacking}"
    ml = ml_operators(model)
    if ml:
        message += (
            f"; it is made of ONNX-ML operators ({', '.join(ml)}), as scikit-learn converters "
            "write them, whose weights live in node attributes that quantization, pruning and "
            "fp16 conversion do not touch"
        )
    return CompressionConfigError(message + "; try --optimize basic")


def dedupe_opsets(model: onnx.ModelProto) -> int:
    """Merge repeated opset imports of one domain in place (skl2onnx writes the default
    domain twice), keeping the highest version; ONNX Runtime's quantizers refuse such models
    with "Failed to find proper ai.onnx domain". Returns how many entries were dropped."""
    versions: dict[str, int] = {}
    for opset in model.opset_import:
        domain = "" if opset.domain == "ai.onnx" else opset.domain
        versions[domain] = max(versions.get(domain, 0), opset.version)
    dropped = len(model.opset_import) - len(versions)
    if dropped:
        del model.opset_import[:]
        model.opset_import.extend(helper.make_opsetid(d, v) for d, v in versions.items())
    return dropped


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def model_family(model: onnx.ModelProto) -> Family:
    """transformer (attention-like MatMul graphs), cnn (mostly Conv layers) or other.

    Counted in layers, not weights: a small CNN's classifier head often holds more weights
    than its convolutions, while the convolutions hold nearly all of the compute.
    """
    counts = op_counts(model)
    dense = counts.get("MatMul", 0) + counts.get("Gemm", 0)
    conv = counts.get("Conv", 0) + counts.get("ConvTranspose", 0)
    attention = any(k.endswith(("Attention", "LayerNormalization")) for k in counts)
    if conv and conv >= dense:
        return "cnn"
    if attention or (counts.get("MatMul", 0) >= 4 and counts.get("Softmax", 0) >= 1):
        return "transformer"
    return "other"


@dataclass(frozen=True)
class Rewrite:
    model: onnx.ModelProto
    changed: int


def gemm_to_matmul(model: onnx.ModelProto) -> Rewrite:
    """Rewrite Gemm(A, const B, C) as MatMul(A, B') + Add(C) so int8/int4 quantizers see it.

    ONNX Runtime's dynamic int8 and MatMulNBits quantizers handle MatMul but not Gemm, and
    exporters turn every nn.Linear on a 2-D input into Gemm. Gemms with transA, or whose B
    is not a constant, are left unchanged.
    """
    model = _copy(model)
    inits = initializers(model)
    nodes: list[onnx.NodeProto] = []
    changed = 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        b_init = inits.get(node.input[1]) if node.op_type == "Gemm" else None
        plain = attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0
        bias = node.input[2] if len(node.input) > 2 else ""
        beta = float(attrs.get("beta", 1.0))
        scalable = beta == 1.0 or bias == "" or bias in inits
        if b_init is None or not plain or not scalable or len(b_init.dims) != 2:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(b_init)
        if attrs.get("transB", 0):
            weight = weight.T
        name = node.name or f"gemm_{changed}"
        new_b = numpy_helper.from_array(np.ascontiguousarray(weight), f"{b_init.name}__matmul")
        model.graph.initializer.append(new_b)
        mm_out = f"{node.output[0]}__matmul" if bias else node.output[0]
        nodes.append(
            helper.make_node("MatMul", [node.input[0], new_b.name], [mm_out], name=f"{name}_MatMul")
        )
        if bias:
            if beta != 1.0:
                scaled = numpy_helper.to_array(inits[bias]) * beta
                scaled_init = numpy_helper.from_array(scaled.astype(np.float32), f"{bias}__beta")
                model.graph.initializer.append(scaled_init)
                bias = scaled_init.name
            nodes.append(
                helper.make_node("Add", [mm_out, bias], [node.output[0]], name=f"{name}_Add")
            )
        changed += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return Rewrite(model=drop_unused_initializers(model), changed=changed)


def flatten_bias(model: onnx.ModelProto) -> int:
    """Give Gemm and Conv biases that are constant [1, N] (or [1, N, 1], ...) tensors the 1-D
    shape [N]; returns how many changed. Same results: Gemm's C broadcasts to [M, N] either
    way and Conv's B has one value per output channel. ONNX Runtime's quant_pre_process fuses
    MatMul + Add([1, N]) into such a Gemm, and its QDQ quantizer then fails on the 2-D bias
    with numpy's "truth value of an array ... is ambiguous" (seen on magika's classifier)."""
    inits = initializers(model)
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    changed = 0
    for node in model.graph.node:
        if node.op_type not in ("Gemm", "Conv") or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.input) < 3 or not node.input[2]:
            continue
        bias = inits.get(node.input[2])
        if bias is None or len(bias.dims) < 2 or uses.get(bias.name, 0) != 1:
            continue
        if sum(1 for d in bias.dims if d != 1) > 1:
            continue
        array = onnx.numpy_helper.to_array(bias).reshape(-1)
        bias.CopyFrom(onnx.numpy_helper.from_array(array, bias.name))
        changed += 1
    return changed


def drop_unused_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    used |= _subgraph_inputs(model.graph)
    keep = [init for init in model.graph.initializer if init.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return model


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                names |= {n for inner in sub.node for n in inner.input}
                names |= _subgraph_inputs(sub)
    return names


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied
