"""Typed configs, one per compression method, plus the accuracy budget and measuring knobs.

Every config is a frozen pydantic model with a `method` tag, so a config dumps to the JSON
recorded in a version's lineage and parses back into the same class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shipyard.compression.errors import CompressionConfigError
from shipyard.package.tensorspec import TensorSpec
from shipyard.runtime.base import GraphOptimization

QuantType = Literal["int8", "uint8"]
AUTO_DEFAULT_DROP = 0.01
"""The accuracy drop the default budget allows with labelled eval data (see resolve_budget)."""
DEFAULT_MIN_FIDELITY = 0.99
"""The default budget's floor for top-1 agreement (class outputs)."""
DEFAULT_MIN_COSINE = 0.98
"""The default budget's floor for mean cosine (embeddings, regressions): int8 MiniLM measures
0.993 on real sentences, so 0.98 keeps a usual quantization and refuses a broken one."""


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DynamicInt8Config(_Config):
    """Weights stored as int8, activations quantized on the fly (MatMulInteger on CPU).

    Best for transformer and other MatMul-heavy models; needs no calibration data. Gemm
    nodes with constant weights are rewritten to MatMul + Add first so they are covered.
    """

    method: Literal["int8-dynamic"] = "int8-dynamic"
    per_channel: bool = True
    """One scale per output channel; on MiniLM it keeps mean cosine 0.992 vs 0.964 per-tensor."""
    reduce_range: bool | None = None
    """7-bit weights: ONNX Runtime's x86 int8 kernels without VNNI/AMX (VPMADDUBSW) can
    saturate on full-range weights. None (default): on exactly where this CPU lacks them
    (`machine.saturating_int8`), and the note says so."""
    weight_type: QuantType = "int8"
    op_types: tuple[str, ...] = ("MatMul", "Gemm")
    embeddings: bool = True
    """Also store constant embedding tables (Gather) as int8; in transformers the token table
    is most of the file (MiniLM: 1.6× smaller without, 4.0× with, mean cosine -0.0006)."""
    exclude_nodes: tuple[str, ...] = ()
    preprocess: bool = True
    """Run ONNX Runtime's quantization pre-processing (shape inference, graph cleanup) first."""


class StaticInt8Config(_Config):
    """Weights and activations in int8 with scales from calibration data, in QDQ format.

    Best for CNNs; the calibration data must look like what the model sees in production.
    """

    method: Literal["int8-static"] = "int8-static"
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = Field(default=99.999, gt=90, le=100)
    """Only for `percentile` calibration: the percentile of |activation| kept in range."""
    per_channel: bool = True
    activation_type: QuantType = "int8"
    weight_type: QuantType = "int8"
    op_types: tuple[str, ...] | None = None
    """None quantizes every op the QDQ quantizer supports."""
    exclude_nodes: tuple[str, ...] = ()
    reduce_range: bool | None = None
    """7-bit weights, as for int8-dynamic; None: on where this x86 CPU lacks VNNI/AMX."""
    max_calibration_rows: int = Field(default=256, ge=1)
    calibration_batch: int = Field(default=16, ge=1)
    preprocess: bool = True


class Fp16Config(_Config):
    """Float16 weights and compute with float32 inputs and outputs kept (for GPUs)."""

    method: Literal["fp16"] = "fp16"
    keep_io_types: bool = True
    op_block_list: tuple[str, ...] | None = None
    """Ops left in float32; None uses the converter's default list."""


class Int4WeightOnlyConfig(_Config):
    """4-bit block-quantized weights for large MatMuls (MatMulNBits), activations in float."""

    method: Literal["int4"] = "int4"
    block_size: int = Field(default=128, ge=16)
    symmetric: bool = True
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = None
    """ONNX Runtime's compute type for MatMulNBits on CPU: 4 = int8 compute (fastest)."""
    min_weight_elements: int = Field(default=4096, ge=1)
    """MatMuls with smaller constant weights are left alone; the win is in large ones."""

    @model_validator(mode="after")
    def _power_of_two(self) -> Int4WeightOnlyConfig:
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two >= 16, got {self.block_size}")
        return self


class OnnxPruneConfig(_Config):
    """Post-training magnitude pruning: zero the smallest weights of MatMul/Gemm/Conv.

    Unstructured zeros shrink the gzip-compressed file, not the latency on ONNX Runtime CPU.
    """

    method: Literal["prune"] = "prune"
    sparsity: float = Field(ge=0.0, lt=1.0)
    op_types: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
    min_weight_elements: int = Field(default=256, ge=1)


class OptimizeConfig(_Config):
    """Graph optimization saved to the file: optional onnxslim, then ONNX Runtime offline.

    `extended` adds fusions into com.microsoft ops, which ties the model to ONNX Runtime and
    may tie it to the instruction set of the machine that wrote it.
    """

    method: Literal["optimize"] = "optimize"
    level: Literal["basic", "extended"] = "basic"
    simplify: bool = True
    """Run onnxslim (constant folding, dead code, shape simplification) when installed."""


class QuantizeAutoConfig(_Config):
    """Pick one quantization by model family: MatMul-heavy → dynamic, Conv-heavy → static."""

    method: Literal["quantize-auto"] = "quantize-auto"


AnyStep = (
    DynamicInt8Config
    | StaticInt8Config
    | Fp16Config
    | Int4WeightOnlyConfig
    | OnnxPruneConfig
    | OptimizeConfig
)
StepConfig = Annotated[AnyStep, Field(discriminator="method")]


class PipelineConfig(_Config):
    """Several steps applied in order and written as one version (e.g. prune, then int8)."""

    method: Literal["pipeline"] = "pipeline"
    steps: tuple[StepConfig, ...] = Field(min_length=1)


class AutoConfig(_Config):
    """Try the applicable candidates and keep the fastest one within the accuracy budget."""

    method: Literal["auto"] = "auto"
    target: Literal["cpu", "gpu"] = "cpu"
    """fp16 is a candidate only for a GPU target: on CPU it is slower than float32."""
    prune_sparsity: float | None = Field(default=0.5, ge=0.0, lt=1.0)
    """Sparsity of the prune+int8 candidate; None leaves that candidate out."""


AnyConfig = AnyStep | QuantizeAutoConfig | PipelineConfig | AutoConfig
CompressionConfig = Annotated[AnyConfig, Field(discriminator="method")]


class Budget(_Config):
    """How much a compressed model may lose against its parent; unset limits are not checked.

    Accuracy is top-1 on labelled eval data; cosine and top-1 agreement compare the
    candidate's outputs with the parent's, row by row.
    """

    max_accuracy_drop: float | None = Field(default=None, ge=0.0, le=1.0)
    min_mean_cosine: float | None = Field(default=None, ge=-1.0, le=1.0)
    min_top1_agreement: float | None = Field(default=None, ge=0.0, le=1.0)

    @property
    def checked(self) -> bool:
        """False for the explicit opt-out `Budget()` (`--no-budget`): nothing is checked."""
        return any(
            limit is not None
            for limit in (self.max_accuracy_drop, self.min_mean_cosine, self.min_top1_agreement)
        )

    def describe(self) -> str:
        """The limits in words, e.g. "top-1 agreement >= 0.99"; "none" when nothing is set."""
        parts = []
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop <= {self.max_accuracy_drop:g}")
        if self.min_mean_cosine is not None:
            parts.append(f"mean cosine >= {self.min_mean_cosine:g}")
        if self.min_top1_agreement is not None:
            parts.append(f"top-1 agreement >= {self.min_top1_agreement:g}")
        return ", ".join(parts) or "none"

    @classmethod
    def default(cls, *, labelled: bool, classes: bool) -> Budget:
        """The budget a run without one gets, against the parent's outputs: an accuracy drop
        of at most AUTO_DEFAULT_DROP with labels, and top-1 agreement (`classes`: the model
        has a class or score output) of at least DEFAULT_MIN_FIDELITY, or else mean cosine of at
        least DEFAULT_MIN_COSINE."""
        return cls(
            max_accuracy_drop=AUTO_DEFAULT_DROP if labelled and classes else None,
            min_top1_agreement=DEFAULT_MIN_FIDELITY if classes else None,
            min_mean_cosine=None if classes else DEFAULT_MIN_COSINE,
        )

    @classmethod
    def from_drop(cls, max_drop: float, *, labelled: bool) -> Budget:
        """`max_drop` is an accuracy drop with labels, else a drop in mean cosine from 1.0."""
        if not 0.0 <= max_drop <= 1.0:
            raise ValueError(f"max_drop must be in [0, 1], got {max_drop}")
        if labelled:
            return cls(max_accuracy_drop=max_drop)
        return cls(min_mean_cosine=1.0 - max_drop)


class MeasureConfig(_Config):
    """How the side-by-side measurement runs; the defaults favour stable numbers."""

    batch_size: int = Field(default=32, ge=1)
    """Batch size for the throughput figure (latency is always at batch 1)."""
    latency_runs: int = Field(default=100, ge=5)
    throughput_runs: int = Field(default=10, ge=2)
    warmup_runs: int = Field(default=3, ge=0)
    min_seconds: float = Field(default=0.5, ge=0.0)
    """Keep timing (past the run counts) until each phase took this long: tiny models need
    thousands of runs for a stable median."""
    max_rows: int = Field(default=512, ge=1)
    """Rows of the eval/sample data used for fidelity (the first `max_rows`); accuracy uses
    every labelled row (`ModelFigures.accuracy_rows` says how many)."""
    intra_op_threads: int = Field(default=0, ge=0)
    graph_optimization: GraphOptimization = "all"
    """ONNX Runtime's session optimization level while measuring; "all" is what serving uses.
    On x86 it includes the NCHWc layout for Conv, which pads channels to blocks of 8 (AVX2)
    or 16 (AVX-512): a CNN pruned below a block gains little there (see docs)."""
    providers: tuple[str, ...] | None = None


NO_BUDGET = Budget()
"""The explicit opt-out (`--no-budget`): the candidate is published without any check."""


def resolve_budget(
    max_drop: float | Budget | None, *, labelled: bool, classes: bool
) -> tuple[Budget, bool]:
    """The Budget a `max_drop` argument stands for, and whether it is the default one.

    None gets `Budget.default` (never no budget: a destroyed model must not become the served
    version because nobody set a limit); NO_BUDGET (`Budget()`) is the explicit opt-out.
    """
    if isinstance(max_drop, Budget):
        return max_drop, False
    if max_drop is None:
        return Budget.default(labelled=labelled, classes=classes), True
    try:
        return Budget.from_drop(max_drop, labelled=labelled), False
    except ValueError as exc:
        raise CompressionConfigError(str(exc)) from exc


def has_class_output(
    outputs: Sequence[TensorSpec], metadata: Mapping[str, Any] | None = None
) -> bool:
    """Whether the fidelity check measures top-1 agreement on these outputs: the importer
    recorded classes, or an integer [N] label output, or a float [N, classes > 1] score
    output not named like an embedding (a sentence embedding's argmax means nothing, so
    embeddings are judged by mean cosine)."""
    if metadata and (metadata.get("classes") or metadata.get("task") == "classification"):
        return True
    for spec in outputs:
        kind = spec.dtype[:1]  # float16/32/64, int8…64, uint8…64, bool, string
        if kind in ("i", "u") and len(spec.shape) == 1:
            return True
        named_like_embedding = any(word in spec.name.lower() for word in _EMBEDDING_WORDS)
        if kind == "f" and len(spec.shape) == 2 and spec.shape[1] > 1 and not named_like_embedding:
            return True
    return False


_EMBEDDING_WORDS = ("embed", "hidden", "pool", "feature", "vector", "encod")
