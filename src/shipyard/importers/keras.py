"""Import Keras 3 models (objects, .keras and .h5 files) on the torch backend, without TensorFlow.

A Keras 3 model on the torch backend is a `torch.nn.Module`, so it is exported with the same
dynamo exporter (dynamic batch, checks) as PyTorch models. Keras' own `model.export(format=
"onnx")` is not used: on torch it takes the legacy TorchScript exporter whenever the batch
is dynamic. Files load with `safe_mode=True`, which refuses Lambda layers' marshalled
bytecode; Shipyard also looks for Lambda layers itself before Keras reads the file.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shipyard.errors import (
    ConversionError,
    UnsafePickleError,
    UnsupportedModelError,
    UsageError,
)
from shipyard.importers.base import Converted
from shipyard.importers.pytorch import (
    DynamicAxes,
    TorchSample,
    eval_mode,
    export_module,
    named_inputs,
    quiet,
    run_torch,
)
from shipyard.importers.samples import synthesize
from shipyard.package.tensorspec import TensorSpec

BACKEND = "torch"
_LAMBDA = (
    "contains a Lambda layer, whose Python bytecode Shipyard will not load (it can run "
    "arbitrary code); replace it with a custom Layer subclass or a built-in layer, save again, "
    "and pack that file (or pack the live model object from Python)"
)


def import_keras() -> Any:
    """Import Keras on the torch backend; refuse a Keras already running on another backend."""
    if "keras" not in sys.modules:
        chosen = os.environ.get("KERAS_BACKEND", "")
        if chosen not in ("", BACKEND):
            raise UsageError(
                f"KERAS_BACKEND={chosen!r}: Shipyard converts Keras models on the torch "
                "backend (no TensorFlow needed); unset KERAS_BACKEND or set it to 'torch'"
            )
        os.environ["KERAS_BACKEND"] = BACKEND
    try:
        import keras
    except ImportError as exc:
        raise UnsupportedModelError(
            f"cannot import keras ({exc}); install the extra: pip install 'shipyard[keras]'"
        ) from exc
    backend = keras.backend.backend()
    if backend != BACKEND:
        raise UsageError(
            f"keras was imported with the {backend!r} backend before Shipyard could choose "
            "'torch'; set KERAS_BACKEND=torch before importing keras (or use a fresh process)"
        )
    return keras


class KerasCall(torch.nn.Module):
    """Calls a Keras model in inference mode with positional tensors, as torch.export needs."""

    def __init__(self, model: Any, *, keys: list[str] | None, multi: bool) -> None:
        super().__init__()
        self.model = model
        self.keys = keys
        self.multi = multi

    def forward(self, *xs: torch.Tensor) -> Any:
        if self.keys is not None:
            return self.model(dict(zip(self.keys, xs, strict=True)), training=False)
        return self.model(list(xs) if self.multi else xs[0], training=False)


def convert(
    model: Any,
    *,
    sample: TorchSample,
    opset: int | None,
    dynamic_axes: DynamicAxes | None = None,
) -> Converted:
    """Convert a live Keras 3 model; `sample` may be omitted when input shapes are known.

    `dynamic_axes` (input name -> {dim: symbol}) marks dims beyond the batch as dynamic.
    """
    keras = import_keras()
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(f"cannot import a {type(model).__name__}; pass a keras.Model")
    keys = _dict_input_keys(model)
    names = keys or _input_names(model)
    inputs = named_inputs(
        _synthesize(model, names) if sample is None else sample, names, varargs=not names
    )
    if names and len(inputs) != len(names):
        raise UsageError(f"the model takes inputs {names}; sample_input gives {list(inputs)}")
    call = KerasCall(model, keys=keys, multi=len(inputs) > 1)
    with eval_mode(call):
        expected = run_torch(call, inputs, output_names=getattr(model, "output_names", None))
        recurrent = _recurrent_layers(model, keras)
        try:
            exported = export_module(
                call,
                inputs,
                expected=expected,
                opset=opset,
                dynamic_axes=dynamic_axes,
                recurrent=recurrent,
            )
        except ConversionError as exc:
            if not recurrent or not _beyond_batch(dynamic_axes, inputs):
                raise
            raise ConversionError(
                f"Keras' torch backend runs {'/'.join(recurrent)} layers as a Python loop over "
                "the time steps, which torch.export and the TorchScript exporter both unroll "
                "to the sample's length, so dynamic_axes beyond the batch cannot stay dynamic "
                "(an exporter limitation, not your model): pack a fixed-length sample without "
                "dynamic_axes, or convert the model on the TensorFlow backend (tf2onnx) and "
                f"pack the .onnx. Details: {exc}"
            ) from exc
    exported.metadata.update(keras_backend=BACKEND, model=type(model).__name__)
    return Converted(
        model=exported.model,
        framework="keras",
        framework_version=str(keras.__version__),
        converter=exported.converter,
        converter_version=torch.__version__,
        sample=inputs,
        expected=expected,
        metadata=exported.metadata,
    )


def convert_file(path: Path, *, sample: TorchSample, opset: int | None) -> Converted:
    """Load a .keras or .h5 file with safe_mode=True, then convert it."""
    keras = import_keras()
    if _has_lambda(path):
        raise UnsafePickleError(f"{path}: {_LAMBDA}")
    try:
        with quiet():
            model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except ImportError as exc:
        raise UnsupportedModelError(
            f"{path}: Keras needs a package to read this file ({exc}); install h5py"
        ) from exc
    except Exception as exc:
        if "Lambda" in str(exc) or "safe_mode" in str(exc):
            raise UnsafePickleError(f"{path}: {_LAMBDA} (Keras: {exc})") from exc
        raise UnsupportedModelError(f"{path}: Keras cannot load this model ({exc})") from exc
    converted = convert(model, sample=sample, opset=opset)
    converted.metadata["keras_file_format"] = path.suffix.lower().lstrip(".")
    return converted


def _recurrent_layers(model: Any, keras: Any) -> list[str]:
    """The kinds of Keras recurrent layer (LSTM, GRU, SimpleRNN ...) in the model, sorted."""
    flatten = getattr(model, "_flatten_layers", None)  # Keras' own recursive walk
    layers = list(flatten(include_self=False, recursive=True)) if callable(flatten) else []
    return sorted({type(layer).__name__ for layer in layers if isinstance(layer, keras.layers.RNN)})


def _beyond_batch(dynamic_axes: DynamicAxes | None, inputs: Mapping[str, np.ndarray]) -> bool:
    return any(
        name in inputs and inputs[name].ndim and dim % inputs[name].ndim != 0
        for name, dims in (dynamic_axes or {}).items()
        for dim in dims
    )


def _dict_input_keys(model: Any) -> list[str] | None:
    structure = getattr(model, "input", None) if _has_inputs(model) else None
    return [str(k) for k in structure] if isinstance(structure, Mapping) else None


def _has_inputs(model: Any) -> bool:
    try:
        return bool(model.inputs)
    except (AttributeError, ValueError):
        return False  # a subclassed or unbuilt model: its inputs are known only from a sample


def _input_names(model: Any) -> list[str]:
    if not _has_inputs(model):
        return []
    names = [str(t.name) for t in model.inputs]
    return names if len(set(names)) == len(names) else [f"input_{i}" for i in range(len(names))]


def _synthesize(model: Any, names: list[str]) -> dict[str, np.ndarray]:
    if not _has_inputs(model):
        raise UsageError(
            "this Keras model does not declare its inputs (subclassed or never built); pass "
            "sample_input"
        )
    specs = []
    for name, tensor in zip(names, model.inputs, strict=True):
        shape = tuple(tensor.shape)
        if any(d is None for d in shape[1:]):
            raise UsageError(
                f"Keras input {name!r} has shape {shape} with unknown dimensions beyond the "
                "batch; pass sample_input with real sizes"
            )
        specs.append(TensorSpec(name=name, dtype=str(tensor.dtype), shape=(-1, *shape[1:])))
    return synthesize(specs)


def _has_lambda(path: Path) -> bool:
    """Look for Lambda layers in the saved config before Keras deserialises anything."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
        else:
            import h5py

            with h5py.File(path, "r") as handle:
                raw = handle.attrs.get("model_config")
                if raw is None:
                    return False
                config = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except (ImportError, OSError, KeyError, ValueError):
        return False  # unreadable here: Keras' own loader reports on it
    return any(
        str(node.get(key, "")).rsplit(".", 1)[-1].rsplit(">", 1)[-1] == "Lambda"
        for node in _walk(config)
        if isinstance(node, dict)
        for key in ("class_name", "registered_name")
    )


def _walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from _walk(child)
