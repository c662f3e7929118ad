"""Import an ONNX model file or ModelProto: checker, shape inference, and a trial run."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime

from shipyard.errors import (
    ConversionError,
    InputError,
    ShipyardError,
    UnsupportedModelError,
    UsageError,
)
from shipyard.importers.base import Converted
from shipyard.package.graph_specs import graph_signature
from shipyard.package.tensorspec import TensorSpec
from shipyard.runtime.onnxrt import OnnxRuntime
from shipyard.runtime.synthesis import candidates, describe_inputs, first_that_runs, graph_hints

# Names a version folder uses for its own files; external data must not take them.
_RESERVED = frozenset({"manifest.json", "model.onnx", "model.sig", "model.onnx.enc"})


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
    if isinstance(model, Path):
        # the graph without external tensor data: for most files that is the whole model
        proto = _load_header(model)
        external = external_data_files(proto, model.parent, source=source)
        if external:
            return _convert_external(model, proto, external, sample=sample)
    else:
        proto = model
    proto, classes = unzip_maps(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ConversionError(f"{source}: onnx.checker rejects the model ({exc})") from exc
    proto, feed = _infer_and_trial(proto, None, sample, source=source)
    return _converted(proto, feed, sample=sample, metadata=classes)


def _infer_and_trial(
    proto: onnx.ModelProto,
    path: Path | None,
    sample: dict[str, np.ndarray] | np.ndarray | None,
    *,
    source: str,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Shape inference on the graph, then a trial run (from `path` when its tensors live in
    files beside it, else from the graph's bytes); the inferred graph and the feed that ran."""
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True)
    except Exception as exc:
        raise ConversionError(f"{source}: ONNX shape inference fails ({exc})") from exc
    inputs, outputs = graph_signature(proto)
    payload = path if path is not None else proto.SerializeToString()
    runtime = OnnxRuntime(payload, inputs=inputs, outputs=outputs, source=source)
    try:
        return proto, _trial(runtime, proto, inputs, sample, source=source)
    finally:
        runtime.close()


def _converted(
    proto: onnx.ModelProto,
    feed: dict[str, np.ndarray],
    *,
    sample: dict[str, np.ndarray] | np.ndarray | None,
    metadata: Mapping[str, object],
    **extra: Any,
) -> Converted:
    # The framework is whatever produced the file (pytorch, skl2onnx …); nothing converted it.
    return Converted(
        model=proto,
        framework=proto.producer_name or "onnx",
        framework_version=proto.producer_version or "unknown",
        converter="onnx-file",
        converter_version=onnx.__version__,
        sample=feed,
        expected={},
        sample_synthesized=sample is None,
        metadata={"onnxruntime_version": onnxruntime.__version__, **metadata},
        **extra,
    )


def _sample_feed(
    sample: dict[str, np.ndarray] | np.ndarray, inputs: list[TensorSpec], *, source: str
) -> dict[str, np.ndarray]:
    if not isinstance(sample, np.ndarray):
        return dict(sample)
    if len(inputs) != 1:
        raise UsageError(
            f"{source}: model takes {len(inputs)} inputs ({describe_inputs(inputs)}); give a "
            ".npz / dict keyed by input name"
        )
    return {inputs[0].name: sample}


def _trial_synthesized(
    runtime: OnnxRuntime, proto: onnx.ModelProto, inputs: list[TensorSpec], *, source: str
) -> dict[str, np.ndarray]:
    """Run made-up inputs (several sizes); say plainly that they were made up if none runs."""
    try:
        feed, _ = first_that_runs(runtime.infer, candidates(inputs, graph_hints(proto)))
    except ShipyardError as exc:
        raise ConversionError(
            f"{source}: a trial run on synthesized inputs failed ({exc}); pass --sample-input "
            f"(a .npz keyed by input name, or sample_input= in Python) with real values for "
            f"{describe_inputs(inputs)}"
        ) from exc
    return feed


def _load_header(path: Path) -> onnx.ModelProto:
    """The graph without external tensor data (small even for a model of many GB)."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UnsupportedModelError(f"{path}: not a readable ONNX model ({exc})") from exc


def external_data_files(model: onnx.ModelProto, base: Path, *, source: str) -> list[str]:
    """Relative paths of the external data files a model refers to, checked to stay inside."""
    found: set[str] = set()
    for tensor in _external_tensors(model):
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        rel = Path(location)
        if not location or rel.is_absolute() or ".." in rel.parts:
            raise UnsupportedModelError(
                f"{source}: tensor {tensor.name!r} keeps its data at {location!r}; external data "
                "must sit beside the model file (a relative path without '..')"
            )
        if rel.as_posix() in _RESERVED or rel.parts[0] == "samples":
            raise UnsupportedModelError(
                f"{source}: external data file {location!r} clashes with a name a package "
                "uses; re-save the model with another location (onnx.save(..., location=...))"
            )
        if not (base / rel).is_file():
            raise UnsupportedModelError(
                f"{source}: tensor {tensor.name!r} needs external data file {base / rel}, "
                "which is missing; keep the data file next to the model"
            )
        found.add(rel.as_posix())
    return sorted(found)


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors = [t for t in model.graph.initializer]
    for node in model.graph.node:
        tensors.extend(a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    return [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]


def _convert_external(
    path: Path,
    header: onnx.ModelProto,
    external: list[str],
    *,
    sample: dict[str, np.ndarray] | np.ndarray | None,
) -> Converted:
    """A model with external data (past protobuf's 2 GB): checked and run from its path.

    The weights are never loaded into Python: the checker and ONNX Runtime read them from
    the files, shape inference runs on the graph alone, and the package copies the files.
    """
    source = str(path)
    try:
        onnx.checker.check_model(source, full_check=True)
    except Exception as exc:
        raise ConversionError(f"{source}: onnx.checker rejects the model ({exc})") from exc
    proto, feed = _infer_and_trial(header, path, sample, source=source)
    return _converted(
        proto,
        feed,
        sample=sample,
        metadata={},
        extra_files={rel: path.parent / rel for rel in external},
        model_path=path,
        external_data=external,
    )


def _trial(
    runtime: OnnxRuntime,
    proto: onnx.ModelProto,
    inputs: list[TensorSpec],
    sample: dict[str, np.ndarray] | np.ndarray | None,
    *,
    source: str,
) -> dict[str, np.ndarray]:
    if sample is None:
        return _trial_synthesized(runtime, proto, inputs, source=source)
    feed = _sample_feed(sample, inputs, source=source)
    try:
        runtime.infer(feed)
    except InputError as exc:
        raise UsageError(f"{source}: the sample input does not fit the model: {exc}") from exc
    return feed


def unzip_maps(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, object]]:
    """Serve a ZipMap output (a sequence of {class: probability} maps, which no tensor
    protocol carries) as the [N, classes] tensor ZipMap was given, under the same name.

    The class order is ZipMap's own; it is returned as metadata `classes`, with a note.
    """
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    zipped = [
        (index, producers[o.name])
        for index, o in enumerate(graph.output)
        if o.name in producers and producers[o.name].op_type == "ZipMap"
    ]
    if not zipped:
        return model, {}
    model = copy.deepcopy(model)
    graph = model.graph
    metadata: dict[str, object] = {}
    for index, node in zipped:
        source, name = node.input[0], node.output[0]
        labels: list[object] = []
        for attr in node.attribute:
            if attr.name == "classlabels_int64s":
                labels = [int(v) for v in attr.ints]
            elif attr.name == "classlabels_strings":
                labels = [v.decode() for v in attr.strings]
        graph.node.remove(next(n for n in graph.node if n.output == node.output))
        for other in graph.node:
            for i, value in enumerate(other.output):
                if value == source:
                    other.output[i] = name
            for i, value in enumerate(other.input):
                if value == source:
                    other.input[i] = name
        rows = _first_dim(graph.input[0]) if graph.input else -1
        graph.output.remove(graph.output[index])
        graph.output.insert(
            index,
            onnx.helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, [rows if rows > 0 else "N", len(labels) or None]
            ),
        )
        metadata["classes"] = labels
        metadata["zipmap_removed"] = (
            f"output {name!r} is served as a [N, {len(labels)}] probability tensor, columns in "
            "the order of 'classes' (the file's ZipMap gave a sequence of maps)"
        )
    return model, metadata


def _first_dim(value: onnx.ValueInfoProto) -> int:
    dims = value.type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") else -1
