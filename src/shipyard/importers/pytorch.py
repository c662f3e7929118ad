"""Import PyTorch modules, ExportedPrograms and .pt2/.pt files to one self-contained ONNX model.

The export itself (exporter choice, dynamic dims, checks) lives in `pytorch_export`; opening
files safely in `pytorch_files`. Both modules' public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shipyard.errors import UnsupportedModelError, UsageError
from shipyard.importers.base import Converted
from shipyard.importers.pytorch_checks import BATCH, check_batch_independence, summary
from shipyard.importers.pytorch_export import (
    DEFAULT_OPSET,
    LEGACY_MAX_OPSET,
    DynamicAxes,
    Exported,
    export_module,
    module_device,
    quiet,
)
from shipyard.importers.pytorch_files import load_checked

__all__ = [
    "BATCH",
    "DEFAULT_OPSET",
    "LEGACY_MAX_OPSET",
    "DynamicAxes",
    "Exported",
    "TorchSample",
    "check_batch_independence",
    "convert",
    "convert_file",
    "eval_mode",
    "export_module",
    "name_outputs",
    "named_inputs",
    "quiet",
    "run_torch",
]

TorchSample = np.ndarray | Mapping[str, np.ndarray] | Sequence[np.ndarray] | None

_NEEDS_SAMPLE = (
    "PyTorch models need sample_input to trace: one array for a single input, or a dict "
    "name -> array in forward() order (e.g. sample_input=np.zeros((2, 3, 32, 32), np.float32))"
)


def convert(
    obj: Any,
    *,
    sample: TorchSample,
    opset: int | None,
    dynamic_axes: DynamicAxes | None = None,
) -> Converted:
    """Convert a live `torch.nn.Module` or `torch.export.ExportedProgram`.

    `dynamic_axes` (input name -> {dim: symbol}) makes more dims than the batch dynamic in a
    live module's export; dims with the same symbol share one size, e.g.
    `{"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}}`.
    """
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(obj, getattr(keras, "Model", ())):
        # Keras 3 models on the torch backend are nn.Modules too; they need Keras' own handling.
        from shipyard.importers import keras as keras_importer

        return keras_importer.convert(obj, sample=sample, opset=opset, dynamic_axes=dynamic_axes)
    if isinstance(obj, torch.export.ExportedProgram):
        if dynamic_axes is not None:
            raise UsageError(
                "dynamic_axes applies to a live nn.Module; an ExportedProgram keeps the dynamic "
                "dims it was exported with: re-export it with dynamic_shapes, or pack the module"
            )
        return _convert_program(obj, sample=sample, opset=opset)
    if isinstance(obj, torch.nn.Module):
        return _convert_module(obj, sample=sample, opset=opset, dynamic_axes=dynamic_axes)
    raise UnsupportedModelError(
        f"cannot import a {type(obj).__name__}; pass a torch.nn.Module or ExportedProgram"
    )


def convert_file(
    path: Path,
    *,
    sample: TorchSample,
    opset: int | None,
    trust_pickle: bool,
    extra_allowed: Iterable[str],
) -> Converted:
    """Convert a .pt2 (torch.export.save) or a .pt/.pth holding a whole pickled nn.Module."""
    model = load_checked(path, trust_pickle=trust_pickle, extra_allowed=extra_allowed)
    if isinstance(model, torch.export.ExportedProgram):
        return _convert_program(model, sample=sample, opset=opset)
    return _convert_module(model, sample=sample, opset=opset, dynamic_axes=None)


def _convert_module(
    module: torch.nn.Module,
    *,
    sample: TorchSample,
    opset: int | None,
    dynamic_axes: DynamicAxes | None,
) -> Converted:
    if sample is None:
        raise UsageError(_NEEDS_SAMPLE)
    params, varargs = _forward_params(module)
    inputs = named_inputs(sample, params, varargs=varargs)
    with eval_mode(module):
        expected = run_torch(module, inputs)
        exported = export_module(
            module, inputs, expected=expected, opset=opset, dynamic_axes=dynamic_axes
        )
    exported.metadata["module"] = type(module).__qualname__
    return _converted(exported, inputs, expected)


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Inference mode for the export; every submodule gets its own previous mode back."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for sub, training in modes:
            sub.training = training


def _convert_program(
    program: torch.export.ExportedProgram, *, sample: TorchSample, opset: int | None
) -> Converted:
    names = [str(n) for n in program.graph_signature.user_inputs]
    if sample is None:
        sample = _example_inputs(program, names)
    inputs = named_inputs(sample, names, varargs=False)
    if not _batch_is_dynamic(program, names):
        raise UsageError(
            "this ExportedProgram has a static batch dimension, and its guards pin the batch "
            "size; re-export it with dynamic_shapes marking dim 0 of every input, e.g. "
            "torch.export.export(model, args, dynamic_shapes={name: {0: torch.export.Dim("
            '"batch")} for each input}), or pack the live nn.Module'
        )
    expected = run_torch(program.module(), inputs)
    exported = export_module(program, inputs, expected=expected, opset=opset)
    return _converted(exported, inputs, expected)


def _converted(
    exported: Exported, inputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]
) -> Converted:
    return Converted(
        model=exported.model,
        framework="pytorch",
        framework_version=torch.__version__,
        converter=exported.converter,
        converter_version=torch.__version__,
        sample=inputs,
        expected=expected,
        metadata=exported.metadata,
    )


def named_inputs(
    sample: TorchSample, params: Sequence[str], *, varargs: bool
) -> dict[str, np.ndarray]:
    """Name the sample's arrays after forward()'s parameters; floats become float32."""
    if sample is None:
        raise UsageError(_NEEDS_SAMPLE)
    if isinstance(sample, np.ndarray):
        arrays = {(params[0] if params else "input"): sample}
    elif isinstance(sample, Mapping):
        keys = [str(k) for k in sample]
        if set(keys) <= set(params):
            arrays = {name: sample[name] for name in params if name in sample}
        elif varargs or not params:
            arrays = {str(k): v for k, v in sample.items()}
        else:
            raise UsageError(
                f"sample_input keys {sorted(set(keys) - set(params))} are not parameters of "
                f"forward({', '.join(params)}); key the arrays by those names"
            )
    else:
        arrays = {
            (params[i] if i < len(params) else f"input_{i}"): value
            for i, value in enumerate(sample)
        }
    if not arrays:
        raise UsageError("sample_input holds no arrays")
    return {name: _as_float32(np.asarray(value), name) for name, value in arrays.items()}


def _as_float32(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    if array.dtype.kind in "biu":
        return array
    raise UsageError(f"sample input {name!r} has dtype {array.dtype}; pass numeric arrays")


def run_torch(
    fn: torch.nn.Module,
    inputs: Mapping[str, np.ndarray],
    *,
    output_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """The original module's outputs on the sample, named like the ONNX outputs will be."""
    tensors = [torch.tensor(value, device=module_device(fn)) for value in inputs.values()]
    try:
        with torch.no_grad():
            out = fn(*tensors)
    except Exception as exc:
        raise UsageError(
            f"the model fails on the sample input ({summary(exc)}); check the sample's "
            f"names, shapes and dtypes: {_describe(inputs)}"
        ) from exc
    return name_outputs(out, output_names)


def _describe(inputs: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in inputs.items())


def name_outputs(out: Any, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """`output` for one tensor, `output_<i>` (or `names`) for sequences, keys for dicts."""
    if isinstance(out, torch.Tensor):
        return {"output": _numpy(out)}
    if isinstance(out, Mapping) and all(isinstance(k, str) for k in out):
        leaves = list(out.values())
        labels = [str(k) for k in out]
    else:
        leaves = list(torch.utils._pytree.tree_leaves(out))
        use_names = (
            names is not None and len(names) == len(leaves) and len(set(names)) == len(names)
        )
        labels = (
            list(names)
            if names is not None and use_names
            else [f"output_{i}" for i in range(len(leaves))]
        )
    if not leaves or not all(isinstance(leaf, torch.Tensor) for leaf in leaves):
        raise UnsupportedModelError(
            f"forward() returns {type(out).__name__} with non-tensor parts; Shipyard exports a "
            "tensor, a tuple/list of tensors, or a dict of str -> tensor"
        )
    return {label: _numpy(leaf) for label, leaf in zip(labels, leaves, strict=True)}


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.asarray(tensor.detach().cpu().numpy())


def _forward_params(module: torch.nn.Module) -> tuple[list[str], bool]:
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return [], True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in parameters if p.kind in positional]
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    return names, varargs


def _example_inputs(
    program: torch.export.ExportedProgram, names: list[str]
) -> dict[str, np.ndarray]:
    example = program.example_inputs
    if example is None:
        raise UsageError(_NEEDS_SAMPLE)
    args, kwargs = example
    if kwargs or len(args) != len(names) or not all(isinstance(a, torch.Tensor) for a in args):
        raise UsageError(_NEEDS_SAMPLE)
    return {name: _numpy(a) for name, a in zip(names, args, strict=True)}


def _batch_is_dynamic(program: torch.export.ExportedProgram, names: list[str]) -> bool:
    wanted = set(names)
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in wanted:
            continue
        value = node.meta.get("val")
        shape = getattr(value, "shape", None)
        if shape is None or not len(shape) or not isinstance(shape[0], torch.SymInt):
            return False
    return True
