"""Compression: quantize, prune and optimize ONNX models, measured against their parent.

`compress(model_dir, config=...)` writes a new version (or rejects a candidate over the
accuracy budget); `compare(model_dir, v1, v2)` measures two versions side by side. PyTorch
training-time pruning lives in `shipyard.compression.prune` (imported on use: it needs torch);
`pack_derived(model, parent=...)` writes such a model as a measured child version.
"""

from shipyard.compression.config import (
    NO_BUDGET,
    AutoConfig,
    Budget,
    CompressionConfig,
    DynamicInt8Config,
    Fp16Config,
    Int4WeightOnlyConfig,
    MeasureConfig,
    OnnxPruneConfig,
    OptimizeConfig,
    PipelineConfig,
    QuantizeAutoConfig,
    StaticInt8Config,
)
from shipyard.compression.data import Dataset, load_dataset
from shipyard.compression.errors import CompressionConfigError, CompressionError
from shipyard.compression.pipeline import (
    CandidateOutcome,
    CompressResult,
    ProgressEvent,
    compare,
    compress,
    pack_derived,
)
from shipyard.compression.quantize import quantize
from shipyard.compression.raw import load_data
from shipyard.compression.report import ComparisonReport, Fidelity, ModelFigures, ServedFidelity

__all__ = [
    "NO_BUDGET",
    "AutoConfig",
    "Budget",
    "CandidateOutcome",
    "ComparisonReport",
    "CompressResult",
    "CompressionConfig",
    "CompressionConfigError",
    "CompressionError",
    "Dataset",
    "DynamicInt8Config",
    "Fidelity",
    "Fp16Config",
    "Int4WeightOnlyConfig",
    "MeasureConfig",
    "ModelFigures",
    "OnnxPruneConfig",
    "OptimizeConfig",
    "PipelineConfig",
    "ProgressEvent",
    "QuantizeAutoConfig",
    "ServedFidelity",
    "StaticInt8Config",
    "compare",
    "compress",
    "load_data",
    "load_dataset",
    "pack_derived",
    "quantize",
]
