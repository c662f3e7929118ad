"""Models whose tensors live in ONNX external data files (how ONNX stores models past 2 GB).

The same code path handles any size; these models are small so the tests stay fast. The
peak-memory figures for a 2.2 GB model come from benchmarks/large_model.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import shipyard
from shipyard.compression import compress
from shipyard.compression.config import DynamicInt8Config
from shipyard.errors import UnsupportedModelError, UsageError
from shipyard.package.hashing import sha256_file
from shipyard.package.manifest import FileEntry
from shipyard.security.encryption import MAGIC, encrypt_version
from shipyard.security.errors import DecryptionError
from shipyard.security.keys import init_keys, load_kek
from shipyard.security.signing import sign_version

ROWS, WIDTH = 500, 8
TABLE = np.arange(ROWS * WIDTH, dtype=np.float32).reshape(ROWS, WIDTH)


def _recommender() -> onnx.ModelProto:
    """An embedding lookup plus a dense layer: ids [batch, 3] -> scores [batch, 3, 2]."""
    dense = np.linspace(-1, 1, WIDTH * 2, dtype=np.float32).reshape(WIDTH, 2)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"]),
        helper.make_node("MatMul", ["rows", "dense"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "recommender",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3, 2])],
        [numpy_helper.from_array(TABLE, "table"), numpy_helper.from_array(dense, "dense")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _reference(ids: np.ndarray) -> np.ndarray:
    dense = np.linspace(-1, 1, WIDTH * 2, dtype=np.float32).reshape(WIDTH, 2)
    return TABLE[ids] @ dense


@pytest.fixture
def external_model(tmp_path: Path) -> Path:
    source = tmp_path / "export"
    source.mkdir()
    path = source / "recommender.onnx"
    onnx.save(
        _recommender(),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="recommender.onnx.data",
        size_threshold=0,
    )
    return path


IDS = np.array([[0, 7, 499], [3, 3, 1]], np.int64)


def test_pack_copies_external_data_and_loads_from_it(external_model: Path, tmp_path: Path) -> None:
    """Before: the model was read into memory, checked in memory, refused past 2 GB."""
    result = shipyard.pack(external_model, name="rec", repo=tmp_path / "models")
    manifest = result.manifest
    assert manifest.external_data == ["recommender.onnx.data"]
    assert set(manifest.files) >= {"model.onnx", "recommender.onnx.data"}
    # the graph in the package is small: the weights stayed in the data file
    assert (result.path / "model.onnx").stat().st_size < TABLE.nbytes // 4
    model = shipyard.load(result.path)
    np.testing.assert_allclose(model.infer(IDS)["scores"], _reference(IDS), rtol=1e-6)
    model.close()
    # the data file is verified like every file
    data = result.path / "recommender.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[100] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.raises(shipyard.ShipyardError, match="sha256"):
        shipyard.load(result.path)


def test_signed_and_encrypted_external_data(external_model: Path, tmp_path: Path) -> None:
    keys = init_keys(tmp_path / "keys")
    version = shipyard.pack(external_model, name="rec", repo=tmp_path / "models").path
    sign_version(version, keys.signing_key)
    signed = shipyard.load(version, public_key=keys.public_key)
    np.testing.assert_allclose(signed.infer(IDS)["scores"], _reference(IDS), rtol=1e-6)
    signed.close()

    kek = load_kek(keys.data_key)
    manifest = encrypt_version(version, kek, chunk_size=1024, remove_signature=True)
    assert manifest.encryption is not None
    assert [f.plain for f in manifest.encryption.data_files] == ["recommender.onnx.data"]
    assert not (version / "recommender.onnx.data").exists()
    assert not (version / "model.onnx").exists()
    assert manifest.warmup is None and not (version / "samples").exists()
    opened = shipyard.load(version, kek=kek)
    np.testing.assert_allclose(opened.infer(IDS)["scores"], _reference(IDS), rtol=1e-6)
    opened.close()

    # chunks are bound to their place: swapping two chunks of the data file is caught even
    # with the manifest re-sealed over the swapped file
    enc = version / "recommender.onnx.data.enc"
    blob = enc.read_bytes()
    record = 1024 + 16  # chunk + GCM tag
    first = slice(len(MAGIC), len(MAGIC) + record)
    second = slice(len(MAGIC) + record, len(MAGIC) + 2 * record)
    swapped = bytearray(blob)
    swapped[first], swapped[second] = blob[second], blob[first]
    enc.write_bytes(bytes(swapped))
    files = dict(manifest.files)
    files["recommender.onnx.data.enc"] = FileEntry(sha256=sha256_file(enc), size=len(swapped))
    forged = manifest.model_copy(update={"files": files}).sealed()
    (version / "manifest.json").write_text(forged.to_json(), encoding="utf-8")
    with pytest.raises(DecryptionError, match=r"recommender\.onnx\.data\.enc: chunk 1"):
        shipyard.load(version, kek=kek)


def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path) -> None:
    model = _recommender()
    source = tmp_path / "export"
    source.mkdir()
    onnx.save(model, str(source / "m.onnx"), save_as_external_data=True, location="w.bin",
              size_threshold=0)  # fmt: skip
    header = onnx.load(str(source / "m.onnx"), load_external_data=False)
    for tensor in header.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../w.bin"
    shutil.move(source / "w.bin", tmp_path / "w.bin")
    onnx.save(header, str(source / "m.onnx"))
    with pytest.raises(UnsupportedModelError, match=r"relative path without '\.\.'"):
        shipyard.pack(source / "m.onnx", name="m", repo=tmp_path / "models")


def test_missing_external_data_file_is_named(external_model: Path, tmp_path: Path) -> None:
    (external_model.parent / "recommender.onnx.data").unlink()
    with pytest.raises(UnsupportedModelError, match="recommender.onnx.data, which is missing"):
        shipyard.pack(external_model, name="rec", repo=tmp_path / "models")


def test_serving_and_compress_on_external_data(external_model: Path, tmp_path: Path) -> None:
    import tritonclient.http as httpclient

    from shipyard.serving.server import start_in_thread

    repo = tmp_path / "models"
    version = shipyard.pack(external_model, name="rec", repo=repo).path
    running = start_in_thread(repo)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{running.port}")
        ids = httpclient.InferInput("ids", list(IDS.shape), "INT64")
        ids.set_data_from_numpy(IDS, binary_data=True)
        scores = client.infer("rec", [ids]).as_numpy("scores")
        np.testing.assert_allclose(scores, _reference(IDS), rtol=1e-6)
        client.close()
    finally:
        running.stop()
    with pytest.raises(UsageError, match="external data files"):
        compress(version.parent, config=DynamicInt8Config())
