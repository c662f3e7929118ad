"""Checks on an exported PyTorch model: batch independence and dynamic lengths.

A graph can run at the sample's sizes and still be wrong at others: a batch size baked in
by a fixed `view`, or a time axis the exporter unrolled to the sample's length (recurrent
layers). Each check runs the converted graph at a second size against the original.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch

from shipyard.errors import ConversionError, UsageError
from shipyard.package.graph_specs import graph_signature

Axes = dict[str, dict[int, str]]  # input name -> {dim index: symbol}, for every input
BATCH = "batch"
_OTHER_LENGTH = 3  # a dynamic dim is also checked at its sample size plus this
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def check_batch_independence(proto: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> str:
    """Run the sample and the sample twice over; each half must give the same outputs.

    This catches a batch size baked into the graph (e.g. `x.view(8, -1)`), which a check at
    the sample's own batch size cannot see.
    """
    sizes = {int(a.shape[0]) for a in inputs.values() if a.ndim}
    if len(sizes) != 1:
        return "skipped: inputs have different leading sizes"
    n = sizes.pop()
    session = _session(proto)
    names = [o.name for o in session.get_outputs()]
    try:
        single = dict(zip(names, session.run(None, dict(inputs)), strict=True))
        feed = {k: np.concatenate([v, v]) for k, v in inputs.items()}
        double = dict(zip(names, session.run(None, feed), strict=True))
    except Exception as exc:
        raise ConversionError(
            f"the exported model fails at batch {2 * n} although it ran at batch {n} "
            f"({summary(exc)}); the model probably hard-codes its batch size (use "
            "x.flatten(1) or x.view(x.shape[0], -1) instead of a fixed view)"
        ) from exc
    for name, ref in single.items():
        if not ref.ndim or ref.shape[0] != n:
            continue
        got = double[name]
        halves_match = got.shape[0] == 2 * n and all(
            np.allclose(half, ref, rtol=1e-3, atol=1e-4, equal_nan=True)
            for half in (got[:n], got[n:])
        )
        if not halves_match:
            raise ConversionError(
                f"output {name!r} changes with the batch size (batch {n} vs {2 * n}); the "
                "exported graph probably hard-codes the batch size of the sample"
            )
    return f"outputs at batch {2 * n} match batch {n}"


def recurrent_layers(model: Any) -> list[str]:
    """The kinds of torch.nn recurrent layer (RNN, LSTM, GRU) in a live module, sorted."""
    if not isinstance(model, torch.nn.Module):
        return []
    return sorted({type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.RNNBase)})


def check_dynamic_lengths(
    proto: onnx.ModelProto,
    module: torch.nn.Module | None,
    inputs: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    axes: Axes,
    *,
    recurrent: Sequence[str] = (),
) -> str | None:
    """Run the export at a second size of each dynamic dim beyond the batch, against `module`.

    An exporter may keep such a dim dynamic on the inputs yet bake the sample's size into the
    graph (an unrolled recurrent loop), or leave output dims that follow it static (an LSTM's
    `[batch, 7, units]`). So the graph's inputs must be dynamic there, its outputs must match
    the original at the other size, and every output dim whose size changed becomes dynamic
    in `proto`, named after the input dim it follows. A note for the manifest, or None when
    there is nothing to check.
    """
    sample_sizes = _length_symbols(inputs, axes)
    if module is None or not sample_sizes:
        return None
    graph_inputs = {s.name: s.shape for s in graph_signature(proto)[0]}
    fixed = [
        f"{name}[{dim}]"
        for name, dims in axes.items()
        for dim in dims
        if dim >= len(graph_inputs.get(name, ())) or graph_inputs[name][dim] != -1
    ]
    if fixed:
        raise ConversionError(f"the exporter fixed the dynamic dims {fixed}; {_pinned(recurrent)}")
    at_sample_label = _sizes_label(sample_sizes)
    session = _session(proto)
    names = [o.name for o in session.get_outputs()]
    at_sample = dict(zip(names, session.run(None, dict(inputs)), strict=True))
    other = _other_length(module, inputs, expected, axes, sample_sizes)
    if other is None:
        return f"skipped: the original model fails at other sizes than {at_sample_label}"
    sizes, feed, want = other
    label = _sizes_label(sizes)
    try:
        got = dict(zip(names, session.run(None, feed), strict=True))
    except Exception as exc:
        raise ConversionError(
            f"the exported model fails at {label} although it ran at {at_sample_label} "
            f"({summary(exc)}); {_pinned(recurrent)}"
        ) from exc
    # The comparison allows the error the export already showed on the sample, and a little.
    slack = max(
        (
            float(np.max(np.abs(at_sample[k].astype(np.float64) - v.astype(np.float64))))
            for k, v in expected.items()
            if k in at_sample and v.dtype.kind == "f" and v.size and v.shape == at_sample[k].shape
        ),
        default=0.0,
    )
    for name, ref in want.items():
        out = got.get(name)
        if out is None:
            continue
        same = out.shape == ref.shape and (
            np.allclose(out, ref, rtol=1e-3, atol=max(1e-4, 10 * slack), equal_nan=True)
            if ref.dtype.kind == "f"
            else np.array_equal(out, ref)
        )
        if not same:
            how = (
                f"shape {list(out.shape)} vs {list(ref.shape)}"
                if out.shape != ref.shape
                else f"max abs diff {float(np.max(np.abs(out.astype(np.float64) - ref))):.3g}"
            )
            raise ConversionError(
                f"output {name!r} at {label} differs from the original model's ({how}), "
                f"although it matched at {at_sample_label}; {_pinned(recurrent)}"
            )
    marked = _mark_dynamic_outputs(proto, at_sample, got, sample_sizes, sizes)
    note = f"outputs at {label} match the original model (sample: {at_sample_label})"
    return note + (f"; dynamic output dims {marked}" if marked else "")


def _length_symbols(inputs: Mapping[str, np.ndarray], axes: Axes) -> dict[str, int]:
    """The dynamic dims beyond the batch: symbol -> its size in the sample."""
    batch = _batch_symbols(axes)
    return {
        symbol: int(inputs[name].shape[dim])
        for name, dims in axes.items()
        for dim, symbol in sorted(dims.items())
        if symbol not in batch
    }


def _batch_symbols(axes: Axes) -> set[str]:
    return {dims[0] for dims in axes.values() if 0 in dims}


def _sizes_label(sizes: Mapping[str, int]) -> str:
    return ", ".join(f"{symbol}={size}" for symbol, size in sizes.items())


def _other_length(
    module: torch.nn.Module,
    inputs: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    axes: Axes,
    sample_sizes: Mapping[str, int],
) -> tuple[dict[str, int], dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    """Sizes, inputs and the original's outputs at a second size of every dynamic dim.

    The sample's rows are repeated (or cropped) along those dims: longer first, shorter when
    the original model refuses longer inputs (e.g. position embeddings at their maximum).
    """
    from shipyard.importers.pytorch import run_torch  # pytorch imports this module

    for step in (_OTHER_LENGTH, -1):
        sizes = {symbol: size + step for symbol, size in sample_sizes.items()}
        if min(sizes.values()) < 1:
            continue
        feed = {}
        for name, array in inputs.items():
            for dim, symbol in axes[name].items():
                if symbol in sizes:
                    array = np.take(array, np.arange(sizes[symbol]) % array.shape[dim], axis=dim)
            feed[name] = array
        try:
            outs = run_torch(module, feed, output_names=list(expected))
        except UsageError:
            continue
        if len(outs) == len(expected):
            return sizes, feed, dict(zip(expected, outs.values(), strict=True))
    return None


def _mark_dynamic_outputs(
    proto: onnx.ModelProto,
    first: Mapping[str, np.ndarray],
    second: Mapping[str, np.ndarray],
    sample_sizes: Mapping[str, int],
    sizes: Mapping[str, int],
) -> list[str]:
    """Give every static graph output dim whose size differs between the runs a dim_param."""
    marked = []
    for value in proto.graph.output:
        a, b = first.get(value.name), second.get(value.name)
        shape = value.type.tensor_type.shape
        if a is None or b is None or a.ndim != b.ndim or len(shape.dim) != a.ndim:
            continue
        for index, dim in enumerate(shape.dim):
            if a.shape[index] == b.shape[index] or dim.dim_param:
                continue
            follows = [
                symbol
                for symbol, size in sample_sizes.items()
                if (size, sizes[symbol]) == (a.shape[index], b.shape[index])
            ]
            dim.dim_param = follows[0] if len(follows) == 1 else f"{value.name}_dim{index}"
            marked.append(f"{value.name}[{index}]")
    return marked


def _pinned(recurrent: Sequence[str]) -> str:
    if recurrent:
        return f"the exporter specialised it through {'/'.join(recurrent)} layers"
    return "the model's code probably pins that size (e.g. a view or loop of a fixed length)"


def limitation(recurrent: Sequence[str], axes: Axes) -> str:
    """Advice for a model with recurrent layers whose dynamic dims no exporter could keep."""
    symbols = sorted({s for dims in axes.values() for s in dims.values()} - _batch_symbols(axes))
    if not recurrent or not symbols:
        return ""
    return (
        f". torch.export (and the TorchScript exporter) cannot keep {symbols} dynamic through "
        f"{'/'.join(recurrent)} here: that is an exporter limitation, not your code; pack a "
        "fixed-length sample without dynamic_axes, or export to ONNX yourself and pack the .onnx"
    )


def _session(proto: onnx.ModelProto) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # a failure here is expected and reported in the error
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return onnxruntime.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def summary(exc: BaseException) -> str:
    """The innermost cause's first line: torch wraps the useful message in generic ones."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = _ANSI.sub("", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
