"""The library's front door: pack a model into a repository, load it back."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.errors import UsageError
from shipyard.importers import convert_any
from shipyard.importers.base import Converted, compare_outputs
from shipyard.importers.samples import SampleLike, read_sample
from shipyard.model import Model, load_model
from shipyard.package.conversion import ConversionCheck, Tolerance
from shipyard.package.graph_specs import default_opset, graph_signature
from shipyard.package.manifest import MODEL_FILE, Lineage, Manifest, Source, Step, now
from shipyard.package.profile import PROFILE_FILE, ProfileRef, build_profile
from shipyard.package.profile_io import as_model_inputs, encode_profile, profile_outputs, read_data
from shipyard.package.store import check_name, next_version, write_version
from shipyard.package.tensorspec import TensorSpec
from shipyard.package.transfer import ImportResult as ImportResult  # re-exported
from shipyard.package.transfer import import_version as import_version  # re-exported
from shipyard.package.warmup import WARMUP_FILE, encode_sample
from shipyard.processing.build import ProcessingPlan, finalize
from shipyard.processing.spec import Processing
from shipyard.runtime.base import RuntimeOptions
from shipyard.runtime.onnxrt import OnnxRuntime


@dataclass(frozen=True)
class PackResult:
    path: Path
    manifest: Manifest


def pack(
    model: Any,
    *,
    name: str,
    repo: str | Path,
    sample_input: SampleLike = None,
    version: int | None = None,
    tolerance: Tolerance | None = None,
    opset: int | None = None,
    trust_pickle: bool = False,
    allow_globals: Iterable[str] = (),
    metadata: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes | Path] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    keep_sample: bool = True,
    reference_data: str | Path | Mapping[str, Any] | None = None,
    processing: ProcessingPlan | Processing | None = None,
) -> PackResult:
    """Convert `model` (object or file) to ONNX, check it against the original, write a version.

    Nothing is written unless the converted model reproduces the original's outputs on the
    sample inputs within `tolerance`. `dynamic_axes` (live torch modules only) makes dims
    beyond the batch dynamic: input name -> {dim: symbol}, e.g. `{"input_ids": {1:
    "sequence"}, "attention_mask": {1: "sequence"}}`; dims sharing a symbol share one size.
    With `keep_sample` (default) the first rows of the sample the conversion was checked
    with are stored in the version (`samples/warmup.npz`, size-capped): the server warms up
    with them and `shipyard inspect --example` builds a request from them.
    `reference_data` (input name -> array, or a .npz/.npy/.csv/.parquet file) is profiled,
    with the converted model's outputs on it, into `profile/reference.json`: the server
    measures drift against it (see shipyard.package.profile).
    `processing` (`shipyard.processing.build.text_plan(...)`, `image_plan(...)`) declares
    text/image inputs and label outputs; pooling it asks for is appended to the graph after
    the conversion check (see docs/processing.md).
    """
    check_name(name)  # before converting anything: a bad name would fail only at the end
    tolerance = tolerance or Tolerance()
    converted = convert_any(
        model,
        sample=read_sample(sample_input),
        opset=opset,
        trust_pickle=trust_pickle,
        allow_globals=allow_globals,
        dynamic_axes=dynamic_axes,
    )
    check = check_converted(converted, tolerance=tolerance)
    processing_spec: Processing | None = None
    processing_files: dict[str, bytes | Path] = {}
    if processing is not None:
        if converted.model_path is not None:
            raise UsageError("processing is not supported for models with external data")
        processing_spec, converted.model, processing_files = finalize(
            processing, converted.model, metadata={**converted.metadata, **(metadata or {})}
        )
    data = converted.model.SerializeToString()
    inputs, outputs = graph_signature(converted.model)
    files: dict[str, bytes | Path] = {MODEL_FILE: data}
    files.update(converted.extra_files)
    files.update(extra_files or {})
    files.update(processing_files)
    warmup = None
    if keep_sample:
        stored = encode_sample(converted.sample, inputs, synthesized=converted.sample_synthesized)
        if stored is not None:
            files[WARMUP_FILE], warmup = stored
    profile = None
    if reference_data is not None:
        files[PROFILE_FILE], profile = _reference_profile(
            converted, inputs, outputs, reference_data
        )
    step_config: dict[str, Any] = {
        "source": str(model) if isinstance(model, str | Path) else type(model).__name__
    }
    manifest = Manifest(
        name=name,
        version=version or next_version(Path(repo), name),
        created=now(),
        source=Source(
            framework=converted.framework,
            framework_version=converted.framework_version,
            converter=converted.converter,
            converter_version=converted.converter_version,
        ),
        opset=default_opset(converted.model),
        inputs=inputs,
        outputs=outputs,
        files={},
        lineage=Lineage(parent=None, steps=[Step(op="pack", config=step_config, at=now())]),
        conversion_check=check,
        metadata={**converted.metadata, **(metadata or {})},
        warmup=warmup,
        profile=profile,
        processing=processing_spec,
        external_data=converted.external_data,
    )
    path, sealed = write_version(Path(repo), manifest, files, version_given=version is not None)
    return PackResult(path=path, manifest=sealed)


def check_converted(converted: Converted, *, tolerance: Tolerance) -> ConversionCheck:
    """Run the converted graph on the sample and compare with the original's outputs."""
    if not converted.sample:
        raise UsageError("importer produced no sample inputs to check the conversion with")
    inputs, outputs = graph_signature(converted.model)
    samples = max((a.shape[0] for a in converted.sample.values() if a.ndim), default=1)
    if not converted.expected:  # nothing to compare with: the importer's trial run was the check
        return compare_outputs({}, {}, samples=samples, tolerance=tolerance)
    runtime = OnnxRuntime(
        converted.model_path or converted.model.SerializeToString(),
        inputs=inputs,
        outputs=outputs,
        options=RuntimeOptions(graph_optimization="basic"),
        source="converted model",
    )
    try:
        actual = runtime.infer(converted.sample)
    finally:
        runtime.close()
    return compare_outputs(converted.expected, actual, samples=samples, tolerance=tolerance)


def _reference_profile(
    converted: Converted,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    data: str | Path | Mapping[str, Any],
) -> tuple[bytes, ProfileRef]:
    """The profile of the reference data and of the converted model's outputs on it."""
    arrays = (
        as_model_inputs(inputs, data)
        if isinstance(data, Mapping)
        else read_data(Path(data), inputs)
    )
    runtime = OnnxRuntime(
        converted.model_path or converted.model.SerializeToString(),
        inputs=inputs,
        outputs=outputs,
        options=RuntimeOptions(graph_optimization="basic"),
        source="converted model",
    )
    try:
        predicted = profile_outputs(runtime.infer, inputs, arrays)
    finally:
        runtime.close()
    profile = build_profile(inputs, arrays, outputs=outputs, output_data=predicted)
    return encode_profile(profile)


def load(
    path: str | Path,
    *,
    version: int | None = None,
    options: RuntimeOptions | None = None,
    public_key: str | Path | None = None,
    kek: bytes | None = None,
) -> Model:
    """Open a verified model version (latest unless `version` is given).

    With `public_key`, a valid signature (model.sig) is required before anything loads;
    `kek` opens an encrypted package (default: $SHIPYARD_KEK).
    """
    return load_model(path, version=version, options=options, public_key=public_key, kek=kek)
