"""Each quantization method: the graph has the expected ops and the numbers stay close."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from shipyard.compression import (
    CompressionConfigError,
    DynamicInt8Config,
    Fp16Config,
    Int4WeightOnlyConfig,
    StaticInt8Config,
    quantize,
)
from shipyard.compression.data import Dataset
from shipyard.compression.graph import op_counts
from tests.compression.conftest import cosine, make_cnn, make_mlp, run


@pytest.fixture
def mlp_file(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), str(path))
    return path


@pytest.fixture
def cnn_file(tmp_path: Path) -> Path:
    path = tmp_path / "cnn.onnx"
    onnx.save(make_cnn(), str(path))
    return path


def test_dynamic_int8_covers_gemm_and_keeps_outputs(
    mlp_file: Path, tmp_path: Path, mlp_x: np.ndarray
) -> None:
    out = tmp_path / "q.onnx"
    notes = quantize(mlp_file, out, DynamicInt8Config())
    counts = op_counts(onnx.load(str(out)))
    assert counts.get("MatMulInteger") == 2 and counts.get("DynamicQuantizeLinear", 0) >= 1
    assert "Gemm" not in counts
    assert any("Gemm" in n for n in notes)
    base, quant = run(mlp_file, mlp_x), run(out, mlp_x)
    assert cosine(base, quant).mean() > 0.999
    assert np.abs(base - quant).max() < 0.1
    weights = [
        i for i in onnx.load(str(out)).graph.initializer if i.data_type == onnx.TensorProto.INT8
    ]
    assert weights and out.stat().st_size < mlp_file.stat().st_size / 2.5


def test_dynamic_defaults_are_per_channel_with_reduce_range_by_machine() -> None:
    config = DynamicInt8Config()
    assert config.per_channel is True and config.reduce_range is None
    assert StaticInt8Config().reduce_range is None


@pytest.mark.parametrize("saturating", [True, False])
def test_reduce_range_follows_the_cpu_unless_set(
    saturating: bool, mlp_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """x86 without VNNI/AMX: 7-bit weights, with a note; elsewhere full 8-bit ones; an
    explicit setting wins either way."""
    from shipyard.compression import machine

    monkeypatch.setattr(machine, "saturating_int8", lambda: saturating)
    notes = quantize(mlp_file, tmp_path / "auto.onnx", DynamicInt8Config())
    assert any("reduce_range on" in n for n in notes) is saturating, notes
    forced = quantize(mlp_file, tmp_path / "off.onnx", DynamicInt8Config(reduce_range=False))
    assert not any("reduce_range on" in n for n in forced), forced


def test_per_channel_scales_differ_from_per_tensor(mlp_file: Path, tmp_path: Path) -> None:
    per_channel, per_tensor = tmp_path / "pc.onnx", tmp_path / "pt.onnx"
    quantize(mlp_file, per_channel, DynamicInt8Config(per_channel=True))
    quantize(mlp_file, per_tensor, DynamicInt8Config(per_channel=False))

    def scale_sizes(path: Path) -> list[int]:
        inits = onnx.load(str(path)).graph.initializer
        return sorted(int(np.prod(i.dims)) for i in inits if i.name.endswith("_scale"))

    assert max(scale_sizes(per_channel)) > 1
    assert max(scale_sizes(per_tensor)) == 1


def test_static_int8_writes_qdq_for_cnn(cnn_file: Path, tmp_path: Path, cnn_x: np.ndarray) -> None:
    out = tmp_path / "s.onnx"
    notes = quantize(
        cnn_file, out, StaticInt8Config(), calibration=Dataset({"x": cnn_x[:32]}, source="calib")
    )
    counts = op_counts(onnx.load(str(out)))
    assert counts.get("QuantizeLinear", 0) >= 3 and counts.get("DequantizeLinear", 0) >= 6
    assert counts["Conv"] == 2
    assert any("calibrated on 32 rows" in n for n in notes)
    base, quant = run(cnn_file, cnn_x), run(out, cnn_x)
    assert cosine(base, quant).mean() > 0.99
    assert (base.argmax(1) == quant.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_static_calibration_methods(
    cnn_file: Path, tmp_path: Path, cnn_x: np.ndarray, method: str
) -> None:
    out = tmp_path / f"{method}.onnx"
    config = StaticInt8Config(calibration_method=method)  # type: ignore[arg-type]
    quantize(cnn_file, out, config, calibration=Dataset({"x": cnn_x[:16]}))
    assert cosine(run(cnn_file, cnn_x), run(out, cnn_x)).mean() > 0.98


def test_static_without_calibration_is_refused(cnn_file: Path, tmp_path: Path) -> None:
    with pytest.raises(CompressionConfigError, match="calibration"):
        quantize(cnn_file, tmp_path / "s.onnx", StaticInt8Config())


def test_fp16_keeps_float32_io(mlp_file: Path, tmp_path: Path, mlp_x: np.ndarray) -> None:
    out = tmp_path / "h.onnx"
    quantize(mlp_file, out, Fp16Config())
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    types = {i.data_type for i in model.graph.initializer}
    assert types == {onnx.TensorProto.FLOAT16}
    base, half = run(mlp_file, mlp_x), run(out, mlp_x)
    assert half.dtype == np.float32
    assert np.abs(base - half).max() < 1e-2


def test_int4_uses_matmulnbits(mlp_file: Path, tmp_path: Path, mlp_x: np.ndarray) -> None:
    out = tmp_path / "i4.onnx"
    config = Int4WeightOnlyConfig(block_size=32, min_weight_elements=2048)
    notes = quantize(mlp_file, out, config)
    counts = op_counts(onnx.load(str(out)))
    # fc1 (128×64) is large enough; fc2 (10×128 = 1280 elements) stays float.
    assert counts.get("com.microsoft.MatMulNBits") == 1 and counts.get("MatMul") == 1
    assert any("1 kept" in n for n in notes)
    assert cosine(run(mlp_file, mlp_x), run(out, mlp_x)).mean() > 0.99


def test_int4_refuses_models_without_large_matmuls(mlp_file: Path, tmp_path: Path) -> None:
    with pytest.raises(CompressionConfigError, match="large MatMuls"):
        quantize(mlp_file, tmp_path / "x.onnx", Int4WeightOnlyConfig(min_weight_elements=10**6))


def test_int4_block_size_must_be_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        Int4WeightOnlyConfig(block_size=48)


def test_preprocess_falls_back_without_symbolic_shapes(
    mlp_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxruntime.quantization import shape_inference

    real = shape_inference.quant_pre_process
    calls: list[bool] = []

    def flaky(model_in: str, model_out: str, **kwargs: bool) -> None:
        calls.append(kwargs.get("skip_symbolic_shape", False))
        if not kwargs.get("skip_symbolic_shape"):
            # what ONNX Runtime does on this failure: a debug model in the current directory
            Path("sym_shape_infer_temp.onnx").write_bytes(b"debug")
            raise Exception("Incomplete symbolic shape inference")
        real(model_in, model_out, **kwargs)

    monkeypatch.setattr(shape_inference, "quant_pre_process", flaky)
    caller_dir = tmp_path / "cwd"
    caller_dir.mkdir()
    monkeypatch.chdir(caller_dir)
    notes = quantize(mlp_file, tmp_path / "q.onnx", DynamicInt8Config())
    assert list(caller_dir.iterdir()) == []
    assert calls == [False, True]
    assert any("skip_symbolic_shape=True" in n and "Incomplete" in n for n in notes)
    assert op_counts(onnx.load(str(tmp_path / "q.onnx"))).get("MatMulInteger") == 2


def test_repeated_opset_imports_are_merged_before_quantizing(
    tmp_path: Path, mlp_x: np.ndarray
) -> None:
    """skl2onnx writes the default domain twice; ONNX Runtime's quantizers refuse that."""
    model = make_mlp()
    model.opset_import.append(onnx.helper.make_opsetid("", 17))
    source, out = tmp_path / "twice.onnx", tmp_path / "q.onnx"
    onnx.save(model, str(source))
    notes = quantize(source, out, DynamicInt8Config())
    assert any("merged 1 repeated opset import" in n for n in notes)
    quantized = onnx.load(str(out))
    assert op_counts(quantized).get("MatMulInteger") == 2
    assert [o.domain for o in quantized.opset_import].count("") == 1
    assert cosine(run(source, mlp_x), run(out, mlp_x)).mean() > 0.999


def test_a_method_with_nothing_to_work_on_says_so(tmp_path: Path) -> None:
    """Dynamic int8 covers MatMul/Gemm only: on a Conv-only graph it would change nothing."""
    model = make_cnn()
    conv_only = onnx.helper.make_graph(
        [n for n in model.graph.node if n.op_type in ("Conv", "Relu")][:2],
        "conv",
        list(model.graph.input),
        [onnx.helper.make_tensor_value_info("ar", onnx.TensorProto.FLOAT, None)],
        initializer=[i for i in model.graph.initializer if i.name.startswith("c1")],
    )
    source = tmp_path / "conv.onnx"
    onnx.save(onnx.helper.make_model(conv_only, opset_imports=model.opset_import), str(source))
    with pytest.raises(CompressionConfigError, match=r"^int8-dynamic does not apply .* no MatMul"):
        quantize(source, tmp_path / "q.onnx", DynamicInt8Config())
    assert not (tmp_path / "q.onnx").exists()


def _matmul_add_row_bias(tmp_path: Path) -> Path:
    """x @ W + b with b shaped [1, N]: ONNX Runtime's pre-processing fuses it into a Gemm
    whose C is [1, N], on which its QDQ quantizer used to fail with a raw numpy error."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(16, 8)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(1, 8)).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "row_bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        [w, b],
    )
    path = tmp_path / "row_bias.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_static_int8_on_a_row_shaped_bias(tmp_path: Path) -> None:
    source = _matmul_add_row_bias(tmp_path)
    x = np.random.default_rng(1).normal(size=(64, 16)).astype(np.float32)
    out = tmp_path / "q.onnx"
    notes = quantize(source, out, StaticInt8Config(), calibration=Dataset({"x": x[:32]}))
    assert any("shape [1, N] the shape [N]" in n for n in notes), notes
    assert "QuantizeLinear" in op_counts(onnx.load(str(out)))
    similarity = cosine(run(source, x[32:]), run(out, x[32:]))
    assert similarity.mean() > 0.99 and similarity.min() > 0.97


def test_flatten_bias_keeps_shared_and_matrix_biases() -> None:
    from onnx import TensorProto, helper, numpy_helper

    from shipyard.compression.graph import flatten_bias

    row = numpy_helper.from_array(np.ones((1, 4), np.float32), "row")
    full = numpy_helper.from_array(np.ones((3, 4), np.float32), "full")
    nodes = [
        helper.make_node("Gemm", ["x", "w", "row"], ["a"]),
        helper.make_node("Gemm", ["x", "w", "full"], ["b"]),  # [M, N]: not a row, kept
    ]
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3, 4]) for n in ("a", "b")],
        [w, row, full],
    )
    model = helper.make_model(graph)
    assert flatten_bias(model) == 1
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    assert dims == {"w": [4, 4], "row": [4], "full": [3, 4]}
    shared = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Gemm", ["x", "w", "row"], ["a"]),
                helper.make_node("Add", ["a", "row"], ["b"]),
            ],
            "g",
            graph.input,
            graph.output,
            [w, row],
        )
    )
    assert flatten_bias(shared) == 0  # also read by the Add: left alone
