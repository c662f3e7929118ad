"""Graph optimization saved to a file: onnxslim simplification, ONNX Runtime offline passes."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from shipyard.compression.config import OptimizeConfig
from shipyard.compression.errors import CompressionError
from shipyard.compression.graph import op_counts
from shipyard.compression.tools import quiet, short

_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}


def optimize(model_in: Path, model_out: Path, config: OptimizeConfig) -> list[str]:
    """Simplify (when asked and installed), then let ONNX Runtime write its optimized graph."""
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="shipyard-opt-") as tmp:
        source = model_in
        if config.simplify:
            simplified = Path(tmp) / "simplified.onnx"
            notes += simplify(model_in, simplified)
            source = simplified
        before = sum(op_counts(onnx.load(str(source))).values())
        offline(source, model_out, config.level)
    after = sum(op_counts(onnx.load(str(model_out))).values())
    notes.append(f"ONNX Runtime {config.level} optimization: {before} → {after} nodes")
    if config.level == "extended":
        notes.append(
            "extended fusions use com.microsoft ops: the file now runs only on ONNX Runtime, "
            "and may depend on this machine's instruction set; re-optimize per target"
        )
    return notes


def offline(model_in: Path, model_out: Path, level: str) -> None:
    """Run ONNX Runtime's graph optimizer once on CPU and save the result to `model_out`."""
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[level]
    options.optimized_model_filepath = str(model_out)
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(model_in), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CompressionError(
            "optimize", f"ONNX Runtime cannot optimize the model ({exc})"
        ) from exc
    if not model_out.is_file():
        raise CompressionError("optimize", "ONNX Runtime did not write the optimized model")


def simplify(model_in: Path, model_out: Path) -> list[str]:
    """onnxslim's constant folding and dead-code removal; copies the model when unavailable."""
    try:
        import onnxslim
    except ImportError:
        shutil.copyfile(model_in, model_out)
        return ["simplification skipped: onnxslim is not installed (pip install onnxslim)"]
    original = onnx.load(str(model_in))
    before = sum(op_counts(original).values())
    try:
        with quiet():
            slimmed = onnxslim.slim(original)
    except Exception as exc:  # onnxslim gives up on some graphs; the model is still valid
        shutil.copyfile(model_in, model_out)
        return [f"simplification skipped: onnxslim failed ({short(exc)})"]
    if not isinstance(slimmed, onnx.ModelProto):
        shutil.copyfile(model_in, model_out)
        return ["simplification skipped: onnxslim returned no model"]
    onnx.save(slimmed, str(model_out))
    after = sum(op_counts(slimmed).values())
    return [f"onnxslim simplification: {before} → {after} nodes"]
