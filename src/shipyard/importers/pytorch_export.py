"""Export a PyTorch module or ExportedProgram to one checked ONNX model with dynamic dimensions.

Exporter choice: torch.onnx's dynamo exporter (torch.export + onnxscript) with dim 0 of every
input, and any dims the caller names in `dynamic_axes`, marked dynamic; the legacy
TorchScript exporter (deprecated in torch 2.13, opset <= 20) only when the dynamo exporter
fails. Which one ran, and why, goes into `Exported.metadata`.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from shipyard.errors import ConversionError, UsageError
from shipyard.importers.graph_names import rename_values
from shipyard.importers.pytorch_checks import (
    BATCH,
    Axes,
    check_batch_independence,
    check_dynamic_lengths,
    limitation,
    recurrent_layers,
    summary,
)
from shipyard.package.graph_specs import graph_signature

DEFAULT_OPSET = 18  # torchlib's native opset: the dynamo exporter needs no version conversion
LEGACY_MAX_OPSET = 20  # the highest opset the TorchScript exporter supports
_MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit for one serialized ModelProto
_QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "keras", "absl")
# Says nothing about the model: sharing one batch Dim across inputs is deliberate.
_NOISE = ("will not be used, since it shares the same shape",)
_QUIET_WARNINGS = (DeprecationWarning, FutureWarning, PendingDeprecationWarning)

# Graph inputs and outputs are exported under these names and renamed to the caller's after:
# the exporter names internal values after their ops ("cat", "add" ...), which may clash.
_PLACEHOLDER = "__shipyard_{}_{}"

DynamicAxes = Mapping[str, Mapping[int, str]]


@dataclass
class Exported:
    """What `export_module` produced: the checked ONNX model and how it was made."""

    model: onnx.ModelProto
    converter: str
    metadata: dict[str, Any] = field(default_factory=dict)


def export_module(
    model: torch.nn.Module | torch.export.ExportedProgram,
    inputs: Mapping[str, np.ndarray],
    *,
    expected: Mapping[str, np.ndarray],
    opset: int | None,
    dynamic_axes: DynamicAxes | None = None,
    recurrent: Sequence[str] | None = None,
) -> Exported:
    """Export to ONNX with a dynamic batch, check it, and prove other batch sizes work.

    Dynamic dims beyond the batch are also checked at a second size (`check_dynamic_lengths`).
    `recurrent` names the model's recurrent layer kinds for error messages; None: the
    torch.nn RNN/LSTM/GRU layers found in a live module.
    """
    target = opset or DEFAULT_OPSET
    device = module_device(model) if isinstance(model, torch.nn.Module) else torch.device("cpu")
    axes = resolve_axes(inputs, dynamic_axes)
    args = _trace_args(inputs, axes, device)
    metadata: dict[str, Any] = {}
    live = model if isinstance(model, torch.nn.Module) else None
    layers = recurrent_layers(model) if recurrent is None else list(recurrent)
    try:
        proto, notes = _export_dynamo(
            model, args, inputs=list(inputs), outputs=list(expected), axes=axes, opset=target
        )
        # torch.export may specialise a dynamic dim (recurrent ops, slicing guards) and still
        # return a model; that counts as a failure here, so the TorchScript exporter gets a go.
        lengths = check_dynamic_lengths(proto, live, inputs, expected, axes, recurrent=layers)
        converter = "torch.onnx (dynamo)"
        metadata["exporter"] = "torch.onnx.export(dynamo=True)"
        metadata["exporter_reason"] = "default: torch.export-based exporter with dynamic_shapes"
        metadata["onnxscript_version"] = _onnxscript_version()
    except Exception as exc:
        dynamo_error = _reason(exc)
        if isinstance(model, torch.export.ExportedProgram) or target > LEGACY_MAX_OPSET:
            # ExportedProgram.module() refuses the eval() the TorchScript exporter needs.
            raise ConversionError(
                f"torch.onnx (dynamo) cannot export the model: {dynamo_error}"
                + limitation(layers, axes)
            ) from exc
        try:
            proto, notes = _export_legacy(
                model, args, inputs=inputs, expected=expected, axes=axes, opset=target
            )
            lengths = check_dynamic_lengths(proto, live, inputs, expected, axes, recurrent=layers)
        except Exception as exc2:
            raise ConversionError(
                f"torch.onnx cannot export the model. dynamo exporter: {dynamo_error}; "
                f"TorchScript exporter: {_reason(exc2)}" + limitation(layers, axes)
            ) from exc2
        converter = "torch.onnx (torchscript, legacy)"
        metadata["exporter"] = "torch.onnx.export(dynamo=False)"
        metadata["exporter_reason"] = f"fallback: dynamo exporter failed ({dynamo_error})"
    proto = _finish(proto, axes if isinstance(model, torch.nn.Module) else None)
    metadata["opset"] = opset_of(proto)
    metadata["dynamic_batch"] = BATCH
    if dynamic_axes:
        # JSON object keys are strings: the manifest must read back as it was written.
        metadata["dynamic_axes"] = {
            name: {str(dim): symbol for dim, symbol in sorted(dims.items())}
            for name, dims in axes.items()
        }
    if lengths is not None:
        metadata["length_check"] = lengths
    metadata["batch_check"] = check_batch_independence(proto, inputs)
    if notes:
        metadata["export_warnings"] = notes
    return Exported(model=proto, converter=converter, metadata=metadata)


def resolve_axes(inputs: Mapping[str, np.ndarray], dynamic_axes: DynamicAxes | None) -> Axes:
    """Every input's dynamic dims: dim 0 is `batch` (one per input if the sample's differ),
    plus the caller's `dynamic_axes`; inputs sharing a symbol must share its size."""
    sizes = {int(a.shape[0]) for a in inputs.values() if a.ndim}
    axes: Axes = {
        name: ({0: BATCH if len(sizes) == 1 else f"{BATCH}_{i}"} if a.ndim else {})
        for i, (name, a) in enumerate(inputs.items())
    }
    unknown = sorted(set(dynamic_axes or {}) - set(inputs))
    if unknown:
        raise UsageError(
            f"dynamic_axes names {unknown}, which are not model inputs; use the input names "
            f"{list(inputs)}"
        )
    for name, dims in (dynamic_axes or {}).items():
        ndim = inputs[name].ndim
        for dim, symbol in dims.items():
            if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
                raise UsageError(
                    f"dynamic_axes[{name!r}] has dim {dim!r}, but that input has {ndim} "
                    f"dims; use an index from 0 to {ndim - 1}"
                )
            if not isinstance(symbol, str) or not symbol.isidentifier():
                raise UsageError(
                    f"dynamic_axes[{name!r}][{dim}] is {symbol!r}; name each dynamic dim with "
                    'an identifier such as "sequence"'
                )
            axes[name][dim % ndim] = symbol
    seen: dict[str, tuple[str, int, int]] = {}
    for name, dims in axes.items():
        for dim, symbol in dims.items():
            size = int(inputs[name].shape[dim])
            first = seen.setdefault(symbol, (name, dim, size))
            if first[2] != size:
                raise UsageError(
                    f"dynamic dim {symbol!r} is {first[2]} in {first[0]!r} (dim {first[1]}) but "
                    f"{size} in {name!r} (dim {dim}); dims sharing a name must have one size "
                    "in the sample"
                )
    return axes


def _trace_args(
    inputs: Mapping[str, np.ndarray], axes: Axes, device: torch.device
) -> tuple[torch.Tensor, ...]:
    # torch.export specialises size-1 dims, so a dynamic dim of 1 is doubled for tracing only;
    # doubling every input a symbol covers keeps shared dims equal.
    args = []
    for name, array in inputs.items():
        for dim in sorted(axes[name]):
            if array.shape[dim] == 1:
                array = np.concatenate([array, array], axis=dim)
        args.append(torch.tensor(array, device=device))
    return tuple(args)


def _export_dynamo(
    model: torch.nn.Module | torch.export.ExportedProgram,
    args: tuple[torch.Tensor, ...],
    *,
    inputs: list[str],
    outputs: list[str],
    axes: Axes,
    opset: int,
) -> tuple[onnx.ModelProto, list[str]]:
    dynamic: Any = None
    if isinstance(model, torch.nn.Module):
        dynamic = _dynamic_shapes(model, args, [axes[name] for name in inputs])
    else:
        args = ()  # an ExportedProgram carries its own example inputs and dynamic shapes
    safe_in, safe_out, restore = _placeholders(inputs, outputs)
    with quiet() as notes:
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            input_names=safe_in,
            output_names=safe_out,
            dynamic_shapes=dynamic,
            opset_version=opset,
            external_data=False,
            verbose=False,
            optimize=True,
        )
    if program is None:
        raise ConversionError("torch.onnx.export returned no program")
    proto = program.model_proto
    rename_values(proto.graph, restore)
    if opset_of(proto) != opset:
        raise ConversionError(f"produced opset {opset_of(proto)}, not the requested {opset}")
    static = [s.name for s in graph_signature(proto)[0] if s.shape and s.shape[0] != -1]
    if static:
        # torch.export specialises a dim silently when the code pins it (e.g. a fixed view).
        raise ConversionError(f"torch.export fixed the batch dimension of inputs {static}")
    return proto, notes


def _dynamic_shapes(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], axes: list[dict[int, str]]
) -> Any:
    # One Dim per symbol: torch.export then knows that inputs sharing it have one size.
    dims = {symbol: torch.export.Dim(symbol) for spec in axes for symbol in spec.values()}
    specs = [{dim: dims[symbol] for dim, symbol in sorted(spec.items())} for spec in axes]
    try:
        signature = inspect.signature(module.forward)
        bound = signature.bind(*args)
    except (TypeError, ValueError):
        return tuple(specs)
    keyed: dict[str, Any] = {}
    position = 0
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
            keyed[name] = tuple(specs[position : position + len(value)])
            position += len(value)
        else:
            keyed[name] = specs[position]
            position += 1
    return keyed


def _export_legacy(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    *,
    inputs: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    axes: Axes,
    opset: int,
) -> tuple[onnx.ModelProto, list[str]]:
    safe_in, safe_out, restore = _placeholders(list(inputs), list(expected))
    safe = dict(zip(inputs, safe_in, strict=True)) | dict(zip(expected, safe_out, strict=True))
    dynamic = {safe[name]: dims for name, dims in axes.items() if dims}
    dynamic.update({safe[name]: {0: BATCH} for name, value in expected.items() if value.ndim})
    with tempfile.TemporaryDirectory() as tmp, quiet() as notes:
        target = Path(tmp) / "model.onnx"
        torch.onnx.export(
            module,
            args,
            str(target),
            dynamo=False,
            input_names=safe_in,
            output_names=safe_out,
            dynamic_axes=dynamic,
            opset_version=opset,
            export_params=True,
            do_constant_folding=True,
            verbose=False,
        )
        proto = onnx.load(str(target))  # also pulls in external data, if any was written
    rename_values(proto.graph, restore)
    return proto, notes


def _placeholders(
    inputs: list[str], outputs: list[str]
) -> tuple[list[str], list[str], dict[str, str]]:
    safe_in = [_PLACEHOLDER.format("in", i) for i in range(len(inputs))]
    safe_out = [_PLACEHOLDER.format("out", i) for i in range(len(outputs))]
    restore = dict(zip(safe_in, inputs, strict=True)) | dict(zip(safe_out, outputs, strict=True))
    return safe_in, safe_out, restore


@contextlib.contextmanager
def quiet() -> Iterator[list[str]]:
    """Keep the exporters off stdout and the log; collect their model-relevant warnings."""
    notes: list[str] = []
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("always")
            yield notes
        for item in caught:
            text = f"{item.category.__name__}: {str(item.message).strip().splitlines()[0][:200]}"
            noise = issubclass(item.category, _QUIET_WARNINGS) or any(n in text for n in _NOISE)
            if not noise and text not in notes:
                notes.append(text)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _finish(proto: onnx.ModelProto, axes: Axes | None = None) -> onnx.ModelProto:
    """One self-contained, checker-clean model whose inputs all start with a dynamic `batch`,
    and whose `axes` (the dims a live module was exported with) are all dynamic."""
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise ConversionError("the exporter left weights in external data files")
    if proto.ByteSize() > _MAX_PROTO_BYTES:
        raise ConversionError(
            "the exported model is over 2 GiB, too large for one self-contained ONNX file"
        )
    _rename_batch_symbol(proto, keep={s for dims in (axes or {}).values() for s in dims.values()})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ConversionError(f"onnx.checker rejects the exported model: {exc}") from exc
    inputs, _ = graph_signature(proto)
    static = [s.name for s in inputs if s.shape and s.shape[0] != -1]
    if static:
        raise ConversionError(f"exported inputs {static} have a fixed batch dimension")
    fixed = [
        f"{s.name}[{dim}]"
        for s in inputs
        for dim in (axes or {}).get(s.name, {})
        if dim >= len(s.shape) or s.shape[dim] != -1
    ]
    if fixed:
        raise ConversionError(
            f"the exporter fixed the dynamic dims {fixed}; the model's code probably pins "
            "their size (e.g. a view or loop with a fixed length)"
        )
    return proto


def _rename_batch_symbol(
    proto: onnx.ModelProto, *, keep: set[str] | frozenset[str] = frozenset()
) -> None:
    # An ExportedProgram's batch Dim may have any name; one the caller chose (`keep`) stays.
    graph = proto.graph
    firsts = {
        v.type.tensor_type.shape.dim[0].dim_param
        for v in graph.input
        if v.type.tensor_type.HasField("shape") and len(v.type.tensor_type.shape.dim)
    }
    if len(firsts) != 1 or not (old := firsts.pop()) or old == BATCH or old in keep:
        return
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == old:
                dim.dim_param = BATCH


def _reason(exc: BaseException) -> str:
    # Shipyard's own messages already say what went wrong; torch's are buried in causes.
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, ConversionError) else summary(exc)


def module_device(module: torch.nn.Module) -> torch.device:
    """Where the module's parameters live (CPU for a module without any)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def opset_of(proto: onnx.ModelProto) -> int:
    """The model's default-domain opset version (0 if it imports none)."""
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _onnxscript_version() -> str:
    import onnxscript

    return str(onnxscript.__version__)
