"""Importers: turn a framework model (object or file) into ONNX plus what checks it.

One module per framework; `convert_any` dispatches on the object's type or the file suffix.
Heavy frameworks (torch, keras) are imported only when the object or file needs them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd

from shipyard.errors import UnsupportedModelError, UsageError
from shipyard.importers.base import Converted
from shipyard.importers.samples import Sample

PICKLE_SUFFIXES = frozenset({".joblib", ".pkl", ".pickle"})
TORCH_SUFFIXES = frozenset({".pt2", ".pt", ".pth"})
KERAS_SUFFIXES = frozenset({".keras", ".h5", ".hdf5"})


def convert_any(
    obj: Any,
    *,
    sample: Sample = None,
    opset: int | None = None,
    trust_pickle: bool = False,
    allow_globals: Iterable[str] = (),
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> Converted:
    """Pick the importer for a live model object or a model file and convert it.

    `dynamic_axes` (input name -> {dim: symbol}, live torch modules only) marks dims beyond
    the batch dynamic; dims that share a symbol share one size.
    """
    if dynamic_axes is not None and not _takes_dynamic_axes(obj):
        raise UsageError(
            f"dynamic_axes applies to live torch.nn.Module objects, not to a {_kind(obj)}; "
            "leave it out (dim 0 is dynamic anyway), or pack the live module from Python"
        )
    if isinstance(obj, str | Path):
        return _convert_file(
            Path(obj),
            sample=sample,
            opset=opset,
            trust_pickle=trust_pickle,
            allow_globals=tuple(allow_globals),
        )
    if isinstance(obj, onnx.ModelProto):
        from shipyard.importers import onnx_file

        return onnx_file.convert(obj, sample=_arrays_only(sample, obj))
    from shipyard.importers import boosters
    from shipyard.importers import sklearn as sk

    if boosters.is_native_booster(obj):
        return boosters.convert_native(obj, sample=sample, opset=opset)
    if boosters.is_catboost(obj):
        return boosters.convert_catboost(obj, sample=sample)
    if sk.is_sklearn(obj):
        return sk.convert(obj, sample=sample, opset=opset)
    sample = _arrays_only(sample, obj)
    # Keras 3 models on the torch backend are nn.Modules too: ask Keras first.
    module = type(obj).__module__.split(".")[0]
    if module == "keras" or ("keras" in sys.modules and _is_keras(obj)):
        from shipyard.importers import keras

        return keras.convert(obj, sample=sample, opset=opset, dynamic_axes=dynamic_axes)
    if module == "torch" or ("torch" in sys.modules and _is_torch(obj)):
        from shipyard.importers import pytorch

        return pytorch.convert(obj, sample=sample, opset=opset, dynamic_axes=dynamic_axes)
    raise UnsupportedModelError(
        f"cannot import a {type(obj).__module__}.{type(obj).__qualname__}; Shipyard imports "
        "torch.nn.Module / ExportedProgram, fitted scikit-learn estimators, XGBoost / "
        "LightGBM / CatBoost models, Keras models, onnx.ModelProto, or files (.onnx .pt2 .keras .h5 .skops, and .joblib/.pkl with --trust-pickle)"
    )


def _arrays_only(sample: Sample, obj: object) -> dict[str, np.ndarray] | np.ndarray | None:
    if isinstance(sample, pd.DataFrame):
        raise UsageError(
            f"a DataFrame sample is for scikit-learn and boosted-tree models, not a {_kind(obj)}; "
            "pass arrays ({input name: array})"
        )
    return sample


def _takes_dynamic_axes(obj: object) -> bool:
    if isinstance(obj, str | Path | onnx.ModelProto) or "torch" not in sys.modules:
        return False
    import torch

    return isinstance(obj, torch.nn.Module)


def _kind(obj: object) -> str:
    if isinstance(obj, str | Path):
        return f"model file ({Path(obj).suffix or 'no suffix'})"
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _is_torch(obj: object) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module | torch.export.ExportedProgram)


def _is_keras(obj: object) -> bool:
    import keras

    return isinstance(obj, keras.Model)


def _convert_file(
    path: Path,
    *,
    sample: Sample,
    opset: int | None,
    trust_pickle: bool,
    allow_globals: tuple[str, ...],
) -> Converted:
    if not path.is_file():
        raise UnsupportedModelError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from shipyard.importers import onnx_file

        return onnx_file.convert(path, sample=_arrays_only(sample, path))
    if suffix == ".skops":
        from shipyard.importers import sklearn as sk

        return sk.convert(
            sk.load_skops(path, extra_allowed=allow_globals), sample=sample, opset=opset
        )
    if suffix in PICKLE_SUFFIXES:
        from shipyard.importers import sklearn as sk
        from shipyard.safepickle.load import load_pickle_file

        obj = load_pickle_file(path, trust_pickle=trust_pickle, extra_allowed=allow_globals)
        from shipyard.importers import boosters

        if boosters.is_native_booster(obj):
            return boosters.convert_native(obj, sample=sample, opset=opset)
        if not sk.is_sklearn(obj):
            raise UnsupportedModelError(
                f"{path}: holds a {type(obj).__name__}, not a scikit-learn estimator"
            )
        return sk.convert(obj, sample=sample, opset=opset)
    if suffix in TORCH_SUFFIXES:
        from shipyard.importers import pytorch

        return pytorch.convert_file(
            path,
            sample=_arrays_only(sample, path),
            opset=opset,
            trust_pickle=trust_pickle,
            extra_allowed=allow_globals,
        )
    if suffix in KERAS_SUFFIXES:
        from shipyard.importers import keras

        return keras.convert_file(path, sample=_arrays_only(sample, path), opset=opset)
    raise UnsupportedModelError(
        f"{path}: unknown model file type {suffix!r}; expected .onnx .pt2 .pt .keras .h5 .skops "
        ".joblib .pkl"
    )
