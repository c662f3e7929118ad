"""The Runtime interface every inference backend implements, and its options."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shipyard.errors import InputError
from shipyard.package.tensorspec import TensorSpec, dtype_name, numpy_dtype

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


def _lossless(array: np.ndarray, target: np.dtype[np.generic]) -> bool:
    if np.can_cast(array.dtype, target, casting="safe"):
        return True
    if array.dtype.kind in "biu" and target.kind in "biuf":
        with np.errstate(all="ignore"):
            converted = array.astype(target)
            return bool(np.array_equal(converted.astype(array.dtype), array))
    return False


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    """ONNX strings are UTF-8 text: bytes elements are decoded, not stringified as "b'..'"."""
    flat = array.astype(object).ravel()
    try:
        flat[:] = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in flat]
    except UnicodeDecodeError as exc:
        raise InputError(f"input {name!r}: an element is not valid UTF-8 ({exc})") from None
    return flat.reshape(array.shape)


def check_inputs(
    specs: Sequence[TensorSpec], inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Validate names, ranks, fixed dims and dtypes; cast only where no value changes."""
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
    checked: dict[str, np.ndarray] = {}
    for name, spec in by_name.items():
        array = np.asarray(inputs[name])
        if array.ndim == 1 and len(spec.shape) == 2 and spec.shape[1] == 1:
            # One column of a table ([-1, 1], skl2onnx's convention) sent as a plain [N].
            array = array.reshape(-1, 1)
        if not spec.shape_matches(array.shape):
            raise InputError(
                f"input {name!r} has shape {list(array.shape)}, the model expects "
                f"{list(spec.shape)} (-1 = any size)"
            )
        target = numpy_dtype(spec.dtype)
        if spec.dtype == "str":
            if array.dtype.kind not in "OUS":
                raise InputError(f"input {name!r} must hold strings, got {array.dtype}")
            array = _as_text(name, array)
        elif array.dtype != target:
            if not _lossless(array, target):
                raise InputError(
                    f"input {name!r} has dtype {dtype_name(array)}, the model expects "
                    f"{spec.dtype}; converting would change values, so cast it yourself "
                    f"(e.g. x.astype('{spec.dtype}'))"
                )
            array = array.astype(target)
        # np.ascontiguousarray would turn a scalar (0-d) input into shape [1]
        contiguous = array.dtype == object or array.flags.c_contiguous
        checked[name] = array if contiguous else np.ascontiguousarray(array)
    return checked
