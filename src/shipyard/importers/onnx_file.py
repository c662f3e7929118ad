"""Import an ONNX model file or ModelProto: checker, shape inference, and a trial run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from shipyard.errors import ConversionError, UnsupportedModelError, UsageError
from shipyard.importers.base import Converted
from shipyard.importers.samples import synthesize
from shipyard.package.signature import graph_signature


def load_onnx_file(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise UnsupportedModelError(f"{path}: not a readable ONNX model ({exc})") from exc


def convert(
    model: onnx.ModelProto | Path,
    *,
    sample: dict[str, np.ndarray] | np.ndarray | None = None,
) -> Converted:
    """Validate an ONNX model and prove it runs on ONNX Runtime before packaging it.

    The original *is* this graph, so there is nothing to compare against; the check is that
    onnx.checker passes, shape inference succeeds, and ONNX Runtime runs the sample.
    """
    source = str(model) if isinstance(model, Path) else "<ModelProto>"
    proto = load_onnx_file(model) if isinstance(model, Path) else model
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ConversionError(f"{source}: onnx.checker rejects the model ({exc})") from exc
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True)
    except Exception as exc:
        raise ConversionError(f"{source}: ONNX shape inference fails ({exc})") from exc
    inputs, _outputs = graph_signature(proto)
    if sample is None:
        feed = synthesize(inputs)
    elif isinstance(sample, np.ndarray):
        if len(inputs) != 1:
            raise UsageError(
                f"{source}: model takes {len(inputs)} inputs; give a .npz / dict keyed by name"
            )
        feed = {inputs[0].name: sample}
    else:
        feed = dict(sample)
    from shipyard.runtime.onnxrt import OnnxRuntime

    runtime = OnnxRuntime(proto.SerializeToString(), inputs=inputs, outputs=_outputs, source=source)
    runtime.infer(feed)
    runtime.close()
    producer = proto.producer_name or "unknown"
    return Converted(
        model=proto,
        framework="onnx",
        framework_version=proto.producer_version or "unknown",
        converter=f"onnx ({producer})",
        converter_version=onnx.__version__,
        sample=feed,
        expected={},
        metadata={"onnxruntime_version": onnxruntime.__version__},
    )
