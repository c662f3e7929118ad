"""compress/compare from raw texts and images: the package's own processing makes the tensors,
and fidelity compares what a client gets (tiny models built in code; MiniLM at the end)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import shipyard
from shipyard.cli import main
from shipyard.compression import (
    CompressionConfigError,
    DynamicInt8Config,
    MeasureConfig,
    StaticInt8Config,
    compare,
    compress,
)
from shipyard.compression.html import rows
from shipyard.compression.pipeline import NO_BUDGET
from shipyard.compression.raw import load_data
from shipyard.demo.images import png_bytes
from shipyard.package.store import read_verified
from shipyard.processing.build import ProcessingPlan, combine, image_plan, parse_labels, text_plan

from .conftest import SENTENCES, cosine, needs_text
from .tiny import tiny_classifier, tiny_encoder, tiny_sample, write_tiny_tokenizer

pytestmark = pytest.mark.timeout(300)
FAST = MeasureConfig(
    batch_size=2, latency_runs=5, throughput_runs=2, warmup_runs=1, min_seconds=0, max_rows=64
)
DIGITS = [str(d) for d in range(10)]
TEXTS = ["hello", "hello world a b a b", "", "a", "b a", "world hello a"]


def write_lines(path: Path, lines: list[str] | list[bytes]) -> Path:
    raw = [line if isinstance(line, bytes) else line.encode() for line in lines]
    path.write_bytes(b"\n".join(raw) + b"\n")
    return path


# ------------------------------------------------------------------------------ texts


def test_texts_become_the_tensors_a_request_of_them_becomes(
    tiny_text_repo: Path, tmp_path: Path
) -> None:
    version_dir = tiny_text_repo / "tiny" / "1"
    data = load_data(write_lines(tmp_path / "t.txt", TEXTS), read_verified(version_dir),
                     version_dir, what="eval")  # fmt: skip
    assert data.raw == "text" and data.rows == 5 and data.labels is None  # blank line skipped
    assert "t.txt (5 texts, processed like requests to v1)" in data.source
    assert data.tokens is not None and data.tokens.counts.tolist() == [3, 8, 3, 4, 5]
    model = shipyard.load(tiny_text_repo / "tiny")
    assert model.processor is not None
    texts = [t for t in TEXTS if t]
    try:
        # Each batch is what the server sends the graph for those texts as one request:
        # padded to its own longest, rounded up to pad_to_multiple (4), capped at 8.
        for start, batch in zip(range(0, 5, 2), data.batches(2), strict=True):
            request = np.array(texts[start : start + 2], dtype=object)
            expected = model.processor.preprocess({"text": request}).inputs
            assert batch.keys() == expected.keys()
            for name, value in expected.items():
                np.testing.assert_array_equal(batch[name], value)
        assert data.tiled(1)["input_ids"].shape == (1, 4)
        assert data.tiled(7)["input_ids"].shape == (7, 8)
    finally:
        model.close()


def test_text_compress_measures_the_served_embedding(tiny_text_repo: Path, tmp_path: Path) -> None:
    texts = write_lines(tmp_path / "eval.txt", TEXTS)
    result = compress(tiny_text_repo / "tiny", config=DynamicInt8Config(), eval_data=texts,
                      max_drop=0.05, measure=FAST)  # fmt: skip
    assert result.accepted, result.reasons
    served = result.report.fidelity.served
    assert served is not None and served.source == "text" and served.rows == 5
    assert served.embedding_output == "sentence_embedding"
    assert served.mean_cosine is not None and served.min_cosine is not None
    assert served.min_cosine >= 0.95 and served.label_agreement is None
    measured = read_verified(result.path).measured
    assert measured["fidelity"]["served"]["source"] == "text"
    assert "eval.txt (5 texts" in measured["data"]
    report = compare(tiny_text_repo / "tiny", 1, 2, eval_data=texts, measure=FAST)
    assert report.fidelity.served is not None and report.fidelity.served.source == "text"


def test_token_outputs_of_batches_cut_to_different_lengths(tmp_path: Path) -> None:
    tokenizer = write_tiny_tokenizer(tmp_path / "tok" / "tokenizer.json")
    repo = tmp_path / "models"
    shipyard.pack(tiny_encoder(), name="states", repo=repo, sample_input=tiny_sample(),
                  processing=text_plan(tokenizer, max_length=8, pad_to_multiple=4,
                                       embedding_output=None))  # fmt: skip
    texts = write_lines(tmp_path / "t.txt", TEXTS)
    report = compare(repo / "states", 1, 1, eval_data=texts, measure=FAST)  # batches 8, 4, 8 wide
    assert report.fidelity.rows == 5 and report.fidelity.mean_cosine == pytest.approx(1.0)
    served = report.fidelity.served
    assert served is not None and served.source == "text"
    assert served.embedding_output is None and served.label_agreement is None


def test_jsonl_labels_are_class_indices_without_class_names(
    tiny_text_repo: Path, tmp_path: Path
) -> None:
    version_dir = tiny_text_repo / "tiny" / "1"
    manifest = read_verified(version_dir)
    rows = [{"text": "hello", "label": 1}, {"text": "a b", "label": "0"}]
    good = write_lines(tmp_path / "l.jsonl", [json.dumps(r) for r in rows])
    data = load_data(good, manifest, version_dir, what="eval")
    assert data.labels is not None and data.labels.tolist() == [1, 0]
    arrays = {"text": np.array(["hello", "a b"]), "y": np.array([1, 0])}  # as in an .npz
    same = load_data(arrays, manifest, version_dir, what="eval")
    assert same.raw == "text" and same.labels is not None and same.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(same.inputs["input_ids"], data.inputs["input_ids"])
    for lines, needle in (
        (['{"text": "a", "label": "cat"}'], r"line 1: label 'cat' is not a class index"),
        (['{"text": "a", "label": 1}', '{"text": "b"}'], r"line 2 has no label"),
        (['{"text": "a"}', '{"text": "b", "label": 1}'], r"line 2 has a label"),
        (["[1, 2]"], r'line 1: each line is an object with a "text" string'),
        (["{nope"], r"line 1 is not JSON"),
    ):
        bad = write_lines(tmp_path / "bad.jsonl", lines)
        with pytest.raises(CompressionConfigError, match=needle):
            load_data(bad, manifest, version_dir, what="eval")


def test_bad_texts_are_one_line_errors_naming_the_row(
    tiny_text_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write_lines(tmp_path / "bad.txt", [b"hello", b"caf\xe9 a", b"b"])
    with pytest.raises(CompressionConfigError) as caught:
        compress(tiny_text_repo / "tiny", config=DynamicInt8Config(), eval_data=bad, measure=FAST)
    assert str(caught.value) == f"{bad} line 2 is not UTF-8 text (byte 3)"
    code = main(["compress", str(tiny_text_repo / "tiny"), "--quantize", "int8-dynamic",
                 "--eval", str(bad)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and f"{bad} line 2 is not UTF-8 text" in err
    # Over-long text where the package does not truncate: what the server would refuse.
    tokenizer = write_tiny_tokenizer(tmp_path / "tok" / "tokenizer.json")
    strict = tmp_path / "strict"
    shipyard.pack(tiny_encoder(), name="strict", repo=strict, sample_input=tiny_sample(),
                  processing=text_plan(tokenizer, max_length=8, truncation=False,
                                       pooling="mean"))  # fmt: skip
    long = write_lines(tmp_path / "long.txt", ["hello", "a b a b a b a b"])
    with pytest.raises(CompressionConfigError, match=r"long.txt line 2 has 10 tokens; this model "
                       r"takes at most 8 \(truncation is off\): shorten it$"):  # fmt: skip
        load_data(long, read_verified(strict / "strict" / "1"), strict / "strict" / "1",
                  what="calibration")  # fmt: skip


def test_raw_data_needs_a_package_that_processes_it(tmp_path: Path, repo: Path) -> None:
    from tests.conftest import make_affine_onnx

    shipyard.pack(make_affine_onnx(), name="affine", repo=repo,
                  sample_input=np.zeros((2, 4), np.float32))  # fmt: skip
    texts = write_lines(tmp_path / "t.txt", ["hello"])
    with pytest.raises(CompressionConfigError, match="needs a package that declares text or image"):
        compress(repo / "affine", config=DynamicInt8Config(), eval_data=texts, measure=FAST)


# ----------------------------------------------------------------------------- images


@pytest.fixture
def digits_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    plan = combine(
        image_plan("size=8x8,mode=L,scale=1/255"),
        ProcessingPlan(labels=parse_labels(",".join(DIGITS)), top_k=3),
    )
    sample = {"x": np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)}
    shipyard.pack(tiny_classifier(), name="digits", repo=repo, sample_input=sample, processing=plan)
    return repo


def image_folder(root: Path, repo: Path, rows: int) -> Path:
    """PNGs in one folder per class, each labelled with the fp32 model's own answer."""
    pixels = np.random.default_rng(3).integers(0, 256, (rows, 8, 8), dtype=np.uint8)
    model = shipyard.load(repo / "digits")
    try:
        labels = model.infer({"x": (pixels[:, None] / 255).astype(np.float32)})["probabilities"]
    finally:
        model.close()
    for index, (image, label) in enumerate(zip(pixels, labels.argmax(axis=1), strict=True)):
        folder = root / DIGITS[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:03d}.png").write_bytes(png_bytes(image))
    return root


def test_image_folder_calibrates_and_scores_what_a_client_gets(
    digits_repo: Path, tmp_path: Path
) -> None:
    images = image_folder(tmp_path / "images", digits_repo, 24)
    result = compress(digits_repo / "digits", config=StaticInt8Config(), calibration=images,
                      eval_data=images, max_drop=0.2, measure=FAST)  # fmt: skip
    assert result.accepted, result.reasons
    report = result.report
    served = report.fidelity.served
    assert served is not None and served.source == "images" and served.rows == 24
    assert served.label_output == "label" and served.label_agreement is not None
    assert served.label_agreement >= 0.8 and served.embedding_output is None
    assert report.baseline.accuracy == 1.0 and report.baseline.accuracy_rows == 24
    assert report.candidate.accuracy == served.label_agreement  # labels: v1's own answers
    notes = read_verified(result.path).lineage.steps[-1].config["notes"]
    assert any("calibrated on 24 rows from" in n and "24 images" in n for n in notes)


def test_the_budget_checks_the_served_labels(digits_repo: Path, tmp_path: Path) -> None:
    from shipyard.compression import OnnxPruneConfig

    images = image_folder(tmp_path / "images", digits_repo, 24)
    result = compress(digits_repo / "digits", config=OnnxPruneConfig(sparsity=0.97),
                      eval_data=images, measure=FAST)  # fmt: skip
    served = result.report.fidelity.served
    assert not result.accepted and served is not None and served.label_agreement is not None
    assert served.label_agreement < 0.99
    assert result.reasons[-1] == (
        f"'label' agreement {served.label_agreement:.4g} is below min top-1 agreement 0.99 by "
        f"{0.99 - served.label_agreement:.4g}"
    )
    # Graph tensors for a package with labels: the served labels are compared all the same.
    x = np.random.default_rng(4).random((8, 1, 8, 8), dtype=np.float32)
    report = compress(digits_repo / "digits", config=DynamicInt8Config(), eval_data={"x": x},
                      max_drop=NO_BUDGET, measure=FAST).report  # fmt: skip
    assert report.fidelity.served is not None and report.fidelity.served.source == "tensors"
    assert "label agreement" in [row[0] for row in rows(report)]


def test_images_in_an_npz_and_unlabelled_folders(digits_repo: Path, tmp_path: Path) -> None:
    version_dir = digits_repo / "digits" / "1"
    manifest = read_verified(version_dir)
    pngs = [png_bytes(np.full((8, 8), v, np.uint8)) for v in (0, 128, 255)]
    np.savez(tmp_path / "raw.npz", image=np.array(pngs, dtype=bytes), y=np.array(["1", "2", "3"]))
    data = load_data(tmp_path / "raw.npz", manifest, version_dir, what="eval")
    assert data.raw == "images" and data.inputs["x"].shape == (3, 1, 8, 8)
    np.testing.assert_allclose(data.inputs["x"][2], 1.0)
    assert data.labels is not None and data.labels.tolist() == ["1", "2", "3"]
    flat = tmp_path / "flat"
    flat.mkdir()
    for index, image in enumerate(pngs):
        (flat / f"{index}.png").write_bytes(image)
    (flat / ".DS_Store").write_bytes(b"\0")  # hidden files are skipped
    data = load_data(flat, manifest, version_dir, what="calibration")
    assert data.rows == 3 and data.labels is None


def test_bad_images_are_one_line_errors_naming_the_file(
    digits_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version_dir = digits_repo / "digits" / "1"
    manifest = read_verified(version_dir)
    images = image_folder(tmp_path / "images", digits_repo, 6)
    junk = next(images.iterdir()) / "notes.txt"
    junk.write_text("not an image")
    with pytest.raises(CompressionConfigError) as caught:
        load_data(images, manifest, version_dir, what="eval")
    message = str(caught.value)
    assert message.startswith(f"{junk}: not a readable image (") and "\n" not in message
    code = main(["compress", str(digits_repo / "digits"), "--quantize", "int8-static",
                 "--calibration", str(images)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and f"{junk}: not a readable image" in err
    junk.unlink()
    (images / "cat").mkdir()
    (images / "cat" / "a.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    with pytest.raises(CompressionConfigError, match=r"cat/a.png: label 'cat' is not one of this "
                       r"package's classes \(0, 1, 2"):  # fmt: skip
        load_data(images, manifest, version_dir, what="eval")
    (images / "loose.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    with pytest.raises(CompressionConfigError, match="holds both files"):
        load_data(images, manifest, version_dir, what="eval")
    texts = write_lines(tmp_path / "t.txt", ["hello"])
    with pytest.raises(CompressionConfigError, match="texts, but this package takes images"):
        load_data(texts, manifest, version_dir, what="eval")


# ----------------------------------------------------------------------------- MiniLM


@needs_text
@pytest.mark.timeout(600)
def test_minilm_int8_from_a_text_file(minilm_copy: Path, tmp_path: Path) -> None:
    texts = [*SENTENCES, "Quantized models answer faster on CPUs with VNNI.",
             "Der schnelle braune Fuchs springt über den faulen Hund."]  # fmt: skip
    eval_file = write_lines(tmp_path / "sentences.txt", texts)
    result = compress(minilm_copy / "minilm", config=DynamicInt8Config(), eval_data=eval_file,
                      measure=FAST.model_copy(update={"batch_size": 4}))  # fmt: skip
    assert result.accepted, result.reasons
    served = result.report.fidelity.served
    assert served is not None and served.source == "text" and served.rows == len(texts)
    assert served.embedding_output == "sentence_embedding"
    assert served.min_cosine is not None and served.min_cosine >= 0.98
    assert result.report.fidelity.min_cosine == served.min_cosine  # the graph's only output
    measured = read_verified(result.path).measured
    assert measured["fidelity"]["served"]["source"] == "text"
    # The child answers texts like the figures say: its embeddings vs the parent's.
    parent = shipyard.load(minilm_copy / "minilm", version=1)
    child = shipyard.load(minilm_copy / "minilm", version=2)
    try:
        assert parent.processor is not None
        feed = parent.processor.preprocess({"text": np.array(texts, dtype=object)}).inputs
        a = parent.infer(feed)["sentence_embedding"]
        b = child.infer(feed)["sentence_embedding"]
    finally:
        parent.close()
        child.close()
    assert cosine(a, b).min() >= 0.98
