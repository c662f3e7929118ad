"""ONNX Runtime backend: provider choice, session options, checked inputs, numpy outputs."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from shipyard.errors import InputError, RuntimeBackendError
from shipyard.package.tensorspec import TensorSpec
from shipyard.runtime.base import RuntimeOptions, check_inputs

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

# ONNX Runtime prints failed runs in red on stderr on top of raising; the exception carries
# the same text, which we turn into our own errors, so its logger only reports fatal ones.
ort.set_default_logger_severity(4)

# Preference order when the caller does not choose: accelerators first, CPU always last.
_PREFERRED = ("CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Providers to use: the requested ones that this onnxruntime build has, else by preference."""
    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise RuntimeBackendError(
                f"execution provider(s) {missing} not available in this onnxruntime build "
                f"(available: {available}); install onnxruntime-gpu for CUDA"
            )
        chosen = list(requested)
    else:
        chosen = [p for p in _PREFERRED if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OnnxRuntime:
    """One ONNX Runtime InferenceSession behind the Runtime interface."""

    def __init__(
        self,
        model: bytes | Path,
        *,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        options: RuntimeOptions | None = None,
        source: str = "model.onnx",
        external_data: Mapping[str, bytes] | None = None,
    ) -> None:
        """`model` as bytes or a path (a path lets ONNX Runtime read external data files
        beside it); `external_data` gives those files' contents from memory instead
        (decrypted packages), keyed by the location the graph names."""
        self.options = options or RuntimeOptions()
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        sess_options = ort.SessionOptions()
        sess_options.intra_op_num_threads = self.options.intra_op_threads
        sess_options.inter_op_num_threads = self.options.inter_op_threads
        sess_options.graph_optimization_level = _LEVELS[self.options.graph_optimization]
        sess_options.log_severity_level = 4
        if external_data:
            names = list(external_data)
            buffers = [external_data[n] for n in names]
            sess_options.add_external_initializers_from_files_in_memory(
                names, buffers, [len(b) for b in buffers]
            )
        providers = choose_providers(self.options.providers)
        payload = model if isinstance(model, bytes) else str(model)
        try:
            self._session = ort.InferenceSession(payload, sess_options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise RuntimeBackendError(f"{source}: ONNX Runtime cannot load it ({exc})") from exc
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._lock = threading.Lock()
        self._closed = False

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run once; inputs are checked against the signature first."""
        return self.run(check_inputs(self._inputs, inputs), output_names)

    def run(
        self, feed: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run a feed `check_inputs` returned, as it is (no second check)."""
        if self._closed:
            raise RuntimeBackendError("runtime is closed")
        names = list(output_names) if output_names else self._output_names
        unknown = [n for n in names if n not in self._output_names]
        if unknown:
            raise InputError(f"unknown output(s) {unknown}; the model has {self._output_names}")
        try:
            results = self._session.run(names, feed)
        except Exception as exc:
            raise run_error(exc) from exc
        return {name: np.asarray(value) for name, value in zip(names, results, strict=True)}

    def close(self) -> None:
        self._closed = True
        del self._session


_NODE_FAILURE = re.compile(
    r"running (?P<op>\w+) node\. Name:'(?P<node>[^']*)' Status Message: (?P<message>.*)", re.S
)
_SOURCE_PREFIX = re.compile(r"^/\S+:\d+ .*? (?:was false\.|\)) ", re.S)
_NOT_THE_REQUEST = ("allocat", "out of memory", "cuda", "cudnn", "provider")


def run_error(exc: Exception) -> InputError | RuntimeBackendError:
    """An ONNX Runtime run failure as our error: the request's fault (400) or the backend's.

    A verified, loaded model that fails inside a node on some inputs fails because of those
    inputs (lengths that do not agree, an index outside a vocabulary): that is an InputError
    with the node and ONNX Runtime's reason, on one line. Memory and provider failures stay
    backend errors.
    """
    text = str(exc)
    kind = type(exc).__name__
    match = _NODE_FAILURE.search(text)
    if match is None:
        if kind == "InvalidArgument":
            reason = text.split("INVALID_ARGUMENT : ", 1)[-1]
            return InputError(f"the model cannot run these inputs: {_one_line(reason)}")
        return RuntimeBackendError(f"inference failed: {_one_line(text)}")
    reason = _SOURCE_PREFIX.sub("", match["message"].strip())
    if any(word in reason.lower() for word in _NOT_THE_REQUEST):
        return RuntimeBackendError(f"inference failed: {_one_line(text)}")
    node = f" {match['node']!r}" if match["node"] else ""
    return InputError(
        f"the model cannot run these inputs: {match['op']} node{node} failed: "
        f"{_one_line(reason)} (check the input shapes and values against the model's metadata)"
    )


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
