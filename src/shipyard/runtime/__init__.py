"""Inference backends behind one Runtime interface."""

from shipyard.runtime.base import Runtime, RuntimeOptions, check_inputs
from shipyard.runtime.onnxrt import OnnxRuntime, choose_providers

__all__ = ["OnnxRuntime", "Runtime", "RuntimeOptions", "check_inputs", "choose_providers"]
