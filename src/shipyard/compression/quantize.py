"""Quantization on ONNX files with ONNX Runtime's tools: int8 dynamic/static, int4, fp16.

`quantize(model_in, model_out, config)` dispatches on the config's type and returns notes
(what was worked around or skipped) for the version's lineage.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from shipyard.compression.config import (
    DynamicInt8Config,
    Fp16Config,
    Int4WeightOnlyConfig,
    StaticInt8Config,
)
from shipyard.compression.data import Dataset
from shipyard.compression.errors import CompressionConfigError, CompressionError
from shipyard.compression.graph import (
    dedupe_opsets,
    default_domain_ops,
    flatten_bias,
    gemm_to_matmul,
    initializers,
    not_applicable,
)
from shipyard.compression.tools import import_keeping_logging, quiet, short

QuantizeConfig = DynamicInt8Config | StaticInt8Config | Int4WeightOnlyConfig | Fp16Config

_QUANT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
_CALIBRATORS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


def quantize(
    model_in: Path,
    model_out: Path,
    config: QuantizeConfig,
    *,
    calibration: Dataset | None = None,
) -> list[str]:
    """Write the quantized model to `model_out`; returns notes for the lineage step.

    A method that would leave the model unchanged (no op it handles, as in scikit-learn
    models made of ONNX-ML operators) raises CompressionConfigError saying so.
    """
    model_in, model_out = model_in.resolve(), model_out.resolve()
    check_applicable(onnx.load(str(model_in)), config)
    # ONNX Runtime's symbolic shape inference saves a debug model (sym_shape_infer_temp.onnx
    # plus a weights file as large as the model) into the current directory when it fails;
    # run the tools from a scratch directory so nothing lands in the caller's.
    with (
        tempfile.TemporaryDirectory(prefix="shipyard-quant-") as tmp,
        contextlib.chdir(tmp),
        quiet(),
    ):
        work = Path(tmp)
        try:
            if isinstance(config, DynamicInt8Config):
                return _dynamic(model_in, model_out, config, work)
            if isinstance(config, StaticInt8Config):
                if calibration is None:
                    raise CompressionConfigError(
                        "int8-static needs calibration data (--calibration calib.npz) that "
                        "looks like production inputs; use int8-dynamic without it"
                    )
                return _static(model_in, model_out, config, calibration, work)
            if isinstance(config, Int4WeightOnlyConfig):
                return _int4(model_in, model_out, config)
            return _fp16(model_in, model_out, config)
        except (CompressionConfigError, CompressionError):
            raise
        except Exception as exc:  # the quantizers raise bare exceptions of many kinds
            raise CompressionError(
                config.method, f"ONNX Runtime's quantizer failed ({exc})"
            ) from exc


def check_applicable(model: onnx.ModelProto, config: QuantizeConfig) -> None:
    """Raise CompressionConfigError when `config` has nothing to work on in `model`."""
    ops = default_domain_ops(model)
    if isinstance(config, DynamicInt8Config):
        targets = set(config.op_types) & ops
        if config.embeddings and "Gather" in ops:
            inits = initializers(model)
            if any(n.op_type == "Gather" and n.input[0] in inits for n in model.graph.node):
                targets.add("Gather")
        if not targets:
            wanted = " or ".join(config.op_types) or "op to quantize"
            raise not_applicable(config.method, f"{wanted} node to quantize", model)
    elif isinstance(config, StaticInt8Config):
        from onnxruntime.quantization.registry import QDQRegistry

        supported = set(config.op_types) if config.op_types else set(QDQRegistry)
        if not supported & ops:
            raise not_applicable(config.method, "op the QDQ quantizer handles", model)
    elif isinstance(config, Fp16Config):
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

        blocked = set(
            DEFAULT_OP_BLOCK_LIST if config.op_block_list is None else config.op_block_list
        )
        if not ops - blocked:
            raise not_applicable(
                config.method, "op that would run in float16 (all are kept in float32)", model
            )


def preprocess(model_in: Path, model_out: Path) -> list[str]:
    """ONNX Runtime's quant_pre_process, falling back when symbolic shape inference fails.

    On transformer exports symbolic shape inference stops with "Incomplete symbolic shape
    inference"; ONNX's own shape inference is then enough, so retry without it and say so.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(model_in), str(model_out))
        return []
    except Exception as first:
        reason = short(first)
    try:
        quant_pre_process(str(model_in), str(model_out), skip_symbolic_shape=True)
        return [
            f"pre-processing: symbolic shape inference failed ({reason}); "
            "ran with skip_symbolic_shape=True"
        ]
    except Exception as second:
        shutil.copyfile(model_in, model_out)
        return [f"pre-processing skipped: it failed twice ({reason}; then {short(second)})"]


class DatasetReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds calibration rows to ONNX Runtime's calibrators in fixed-size batches."""

    def __init__(self, data: Dataset, batch: int) -> None:
        self._data = data
        self._batch = batch
        self._batches: Iterator[dict[str, np.ndarray]] = data.batches(batch)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._data.batches(self._batch)


def _dynamic(model_in: Path, model_out: Path, config: DynamicInt8Config, work: Path) -> list[str]:
    notes, source = _normalized(model_in, work, rewrite_gemm="Gemm" in config.op_types)
    if config.preprocess:
        prepared = work / "preprocessed.onnx"
        notes += preprocess(source, prepared)
        source = prepared
    reduce_range, note = _reduce_range(config.reduce_range)
    notes += note
    op_types = {"MatMul" if t == "Gemm" else t for t in config.op_types}
    if config.embeddings:
        op_types.add("Gather")
    quantize_dynamic(
        source,
        model_out,
        op_types_to_quantize=sorted(op_types),
        per_channel=config.per_channel,
        reduce_range=reduce_range,
        weight_type=_QUANT_TYPES[config.weight_type],
        nodes_to_exclude=list(config.exclude_nodes),
    )
    return notes


def _static(
    model_in: Path, model_out: Path, config: StaticInt8Config, data: Dataset, work: Path
) -> list[str]:
    notes, source = _normalized(model_in, work, rewrite_gemm=False)
    if config.preprocess:
        prepared = work / "preprocessed.onnx"
        notes += preprocess(source, prepared)
        source = prepared
    flattened, source = _flat_biases(source, work)
    notes += flattened
    rows = min(data.rows, config.max_calibration_rows)
    notes.append(f"calibrated on {rows} rows from {data.source} ({config.calibration_method})")
    reduce_range, note = _reduce_range(config.reduce_range)
    notes += note
    extra: dict[str, object] = {}
    if config.calibration_method == "percentile":
        extra["CalibPercentile"] = config.percentile
    quantize_static(
        source,
        model_out,
        DatasetReader(data.head(rows), config.calibration_batch),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(config.op_types) if config.op_types else None,
        per_channel=config.per_channel,
        activation_type=_QUANT_TYPES[config.activation_type],
        weight_type=_QUANT_TYPES[config.weight_type],
        nodes_to_exclude=list(config.exclude_nodes),
        calibrate_method=_CALIBRATORS[config.calibration_method],
        reduce_range=reduce_range,
        extra_options=extra,
    )
    return notes


def _reduce_range(wanted: bool | None) -> tuple[bool, list[str]]:
    """`reduce_range` as configured, or (None) on where this CPU's int8 kernels saturate."""
    if wanted is not None:
        return wanted, []
    from shipyard.compression.machine import saturating_int8

    if not saturating_int8():
        return False, []
    return True, [
        "reduce_range on: this x86 CPU has no VNNI/AMX, whose int8 kernels saturate on "
        "full-range weights (set reduce_range = false to override)"
    ]


def _int4(model_in: Path, model_out: Path, config: Int4WeightOnlyConfig) -> list[str]:
    nbits = import_keeping_logging("onnxruntime.quantization.matmul_nbits_quantizer")

    original = onnx.load(str(model_in))
    notes = _opset_note(dedupe_opsets(original))
    rewrite = gemm_to_matmul(original)
    model = rewrite.model
    if rewrite.changed:
        notes.append(f"rewrote {rewrite.changed} Gemm node(s) as MatMul + Add")
    inits = initializers(model)
    chosen, skipped = 0, []
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
        if node.op_type != "MatMul":
            continue
        weight = inits.get(node.input[1])
        size = int(np.prod(weight.dims)) if weight is not None else 0
        if weight is None or len(weight.dims) != 2 or size < config.min_weight_elements:
            skipped.append(node.name)
        else:
            chosen += 1
    if not chosen:
        raise not_applicable(
            config.method,
            f"MatMul or Gemm with a constant 2-D weight of >= {config.min_weight_elements} "
            "elements (int4 weight-only quantization pays off only on large MatMuls)",
            model,
        )
    algo = nbits.DefaultWeightOnlyQuantConfig(
        block_size=config.block_size,
        is_symmetric=config.symmetric,
        accuracy_level=config.accuracy_level,
        op_types_to_quantize=("MatMul",),
    )
    quantizer = nbits.MatMulNBitsQuantizer(
        model,
        bits=4,
        block_size=config.block_size,
        is_symmetric=config.symmetric,
        accuracy_level=config.accuracy_level,
        nodes_to_exclude=skipped,
        algo_config=algo,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(model_out), use_external_data_format=False)
    notes.append(f"{chosen} MatMul(s) to 4-bit blocks of {config.block_size}, {len(skipped)} kept")
    return notes


def _fp16(model_in: Path, model_out: Path, config: Fp16Config) -> list[str]:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(
        onnx.load(str(model_in)),
        keep_io_types=config.keep_io_types,
        op_block_list=list(config.op_block_list) if config.op_block_list is not None else None,
    )
    onnx.save(converted, str(model_out))
    return ["fp16 pays off on GPUs (tensor cores); on CPU ONNX Runtime it is usually slower"]


def _normalized(model_in: Path, work: Path, *, rewrite_gemm: bool) -> tuple[list[str], Path]:
    """The model with repeated opset imports merged and (when asked) Gemm as MatMul + Add;
    `model_in` itself when neither changes anything."""
    model = onnx.load(str(model_in))
    notes = _opset_note(dedupe_opsets(model))
    if rewrite_gemm:
        rewrite = gemm_to_matmul(model)
        if rewrite.changed:
            model = rewrite.model
            notes.append(
                f"rewrote {rewrite.changed} Gemm node(s) as MatMul + Add for MatMulInteger"
            )
    if not notes:
        return [], model_in
    path = work / "normalized.onnx"
    onnx.save(model, str(path))
    return notes, path


def _flat_biases(source: Path, work: Path) -> tuple[list[str], Path]:
    """`source` with Gemm/Conv biases shaped [1, N] made [N] (graph.flatten_bias), for the
    QDQ quantizer's bias-scale adjustment; `source` itself when none is."""
    model = onnx.load(str(source))
    changed = flatten_bias(model)
    if not changed:
        return [], source
    path = work / "flat-bias.onnx"
    onnx.save(model, str(path))
    return [f"gave {changed} Gemm/Conv bias(es) of shape [1, N] the shape [N]"], path


def _opset_note(dropped: int) -> list[str]:
    if not dropped:
        return []
    return [f"merged {dropped} repeated opset import(s) (ONNX Runtime's quantizer refuses them)"]
