"""The Runtime interface every inference backend implements, and its options."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shipyard.errors import InputError
from shipyard.package.dtypes import coerce
from shipyard.package.tensorspec import TensorSpec

GraphOptimization = Literal["disable", "basic", "extended", "all"]


class RuntimeOptions(BaseModel):
    """How a backend runs a model. Zero threads means 'let the backend decide'."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    intra_op_threads: int = Field(default=0, ge=0)
    """Threads one operator may use (0: the backend's choice, about one per core)."""
    inter_op_threads: int = Field(default=0, ge=0)
    """Threads running independent operators at once (0: the backend's choice)."""
    graph_optimization: GraphOptimization = "all"
    """Graph optimization level: "disable", "basic", "extended" or "all"."""
    providers: tuple[str, ...] | None = None
    """Execution providers in order of preference; None picks by availability (GPU first)."""


@runtime_checkable
class Runtime(Protocol):
    """A loaded model ready to run: signature in, numpy out."""

    @property
    def inputs(self) -> list[TensorSpec]: ...

    @property
    def outputs(self) -> list[TensorSpec]: ...

    @property
    def providers(self) -> list[str]: ...

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Check `inputs` against the signature (`check_inputs`), then run."""
        ...

    def run(
        self, feed: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run a feed that `check_inputs` already returned (the server checks each request
        once, before it joins a batch); None or empty output names: every output."""
        ...

    def close(self) -> None: ...


def check_inputs(
    specs: Sequence[TensorSpec], inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Validate names, ranks, fixed dims and dtypes (cast by `dtypes.coerce`'s one rule)."""
    if len(inputs) != len(specs) or any(spec.name not in inputs for spec in specs):
        _check_names(specs, inputs)
    checked: dict[str, np.ndarray] = {}
    for spec in specs:
        name = spec.name
        array = inputs[name]
        if type(array) is not np.ndarray:
            array = np.asarray(array)
        if array.ndim == 1 and len(spec.shape) == 2 and spec.shape[1] == 1:
            # One column of a table ([-1, 1], skl2onnx's convention) sent as a plain [N].
            array = array.reshape(-1, 1)
        if not spec.shape_matches(array.shape):
            raise InputError(
                f"input {name!r} has shape {list(array.shape)}, the model expects "
                f"{list(spec.shape)} (-1 = any size)"
            )
        array = coerce(array, spec.dtype, what=f"input {name!r}")
        # np.ascontiguousarray would turn a scalar (0-d) input into shape [1]
        contiguous = array.dtype == object or array.flags.c_contiguous
        checked[name] = array if contiguous else np.ascontiguousarray(array)
    return checked


def _check_names(specs: Sequence[TensorSpec], inputs: Mapping[str, np.ndarray]) -> None:
    """InputError for an input the model lacks or one it does not take."""
    by_name = {spec.name: spec for spec in specs}
    missing = [name for name in by_name if name not in inputs]
    if missing:
        raise InputError(
            f"missing input(s) {missing}; the model takes {[s.describe() for s in specs]}"
        )
    unknown = sorted(set(inputs) - set(by_name))
    if unknown:
        raise InputError(
            f"unknown input(s) {unknown}; the model takes {[s.describe() for s in specs]}"
        )
