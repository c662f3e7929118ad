"""The digits demo takes a PNG and answers a label, beside its raw tensor interface."""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import httpx
import numpy as np
import pytest

import shipyard
from shipyard.demo import DemoResult, build_demo_repository
from shipyard.demo.build import SPECS, cache_key
from shipyard.demo.images import image_request
from shipyard.serving.server import RunningServer, start_in_thread
from shipyard.serving.settings import load_settings

HAS_TORCH = all(importlib.util.find_spec(n) is not None for n in ("torch", "onnxscript"))
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="the digits demo needs shipyard[torch]")
pytestmark = pytest.mark.timeout(600)


def test_the_cache_key_covers_the_processing_the_recipes_declare() -> None:
    by_name = {spec.name: spec for spec in SPECS}
    for name in ("digits", "minilm"):
        sources = cache_key(by_name[name])["sources"]
        assert {"shipyard.processing.build", "shipyard.processing.spec"} <= set(sources)
        assert all(len(digest) == 64 for digest in sources.values())
    assert "shipyard.demo.images" in cache_key(by_name["digits"])["sources"]
    assert "shipyard.processing.build" not in cache_key(by_name["iris"])["sources"]


def test_image_request_is_a_v2_binary_body() -> None:
    body, head = image_request([b"\x89PNG-one", b"two"], outputs=["label"])
    assert body[:head].startswith(b'{"inputs":[{"name":"image","shape":[2],"datatype":"BYTES"')
    assert b'"outputs":[{"name":"label"}]' in body[:head]
    assert body[head:] == b"\x08\x00\x00\x00\x89PNG-one\x03\x00\x00\x00two"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    if not HAS_TORCH:
        pytest.skip("the digits demo needs shipyard[torch]")
    repo = tmp_path_factory.mktemp("digits-demo") / "models"
    (result,) = build_demo_repository(repo, only=["digits"])
    return result


@pytest.fixture(scope="module")
def server(digits: DemoResult) -> Iterator[RunningServer]:
    running = start_in_thread(
        settings=load_settings(repository=digits.path.parents[1], port=0, poll_interval_s=0)
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.slow
@needs_torch
def test_digits_declares_image_processing_and_labels(digits: DemoResult) -> None:
    from shipyard.demo.digits import CLASS_NAMES, EVAL_FILE, SAMPLE_IMAGE, to_png
    from shipyard.processing.image import decode_image

    processing = digits.manifest.processing
    assert processing is not None and processing.image is not None
    image, labels = processing.image, processing.labels
    assert (image.width, image.height, image.mode, image.layout) == (8, 8, "L", "NCHW")
    assert image.scale == pytest.approx(1 / 255) and image.tensor == digits.manifest.inputs[0].name
    assert labels is not None and labels.classes == CLASS_NAMES and labels.top_k == 3
    with np.load(digits.data[EVAL_FILE], allow_pickle=False) as saved:
        x = saved["x"]
    sample = digits.data[SAMPLE_IMAGE].read_bytes()
    assert sample.startswith(b"\x89PNG") and sample == to_png(x[0])
    # The decoded PNG is the eval image up to 8-bit rounding (the dataset has 17 levels).
    decoded = decode_image(sample, spec=image)
    np.testing.assert_allclose(decoded, x[0], atol=0.5 / 255 + 1e-6)
    model = shipyard.load(digits.path.parent)
    assert model.processor is not None
    prepared = model.processor.preprocess({"image": np.array([sample], dtype=object)})
    via_image = model.infer(prepared.inputs)
    via_tensor = model.infer({image.tensor: decoded[None]})
    scores = labels.scores
    np.testing.assert_array_equal(via_image[scores], via_tensor[scores])
    labelled = model.processor.postprocess(via_image, [])
    assert labelled["label"].tolist() == [CLASS_NAMES[int(np.argmax(via_tensor[scores]))]]
    original = model.infer({image.tensor: x[:1]})[scores]
    assert int(np.argmax(original)) == int(np.argmax(via_tensor[scores]))
    model.close()


@pytest.mark.slow
@needs_torch
def test_served_digits_answers_a_png_with_its_label_and_still_takes_tensors(
    digits: DemoResult, server: RunningServer
) -> None:
    from shipyard.demo.digits import SAMPLE_IMAGE

    png = digits.data[SAMPLE_IMAGE].read_bytes()
    body, head = image_request([png, png])
    url = f"{server.url}/v2/models/digits/infer"
    with httpx.Client(timeout=30) as client:
        reply = client.post(
            url, content=body, headers={"Inference-Header-Content-Length": str(head)}
        )
        assert reply.status_code == 200, reply.text
        outputs = {o["name"]: o for o in reply.json()["outputs"]}
        assert set(outputs) == {
            "label",
            "top_labels",
            "top_scores",
            digits.manifest.outputs[0].name,
        }
        label = outputs["label"]["data"]
        assert label[0] == label[1] and label[0] in [str(d) for d in range(10)]
        assert outputs["top_labels"]["shape"] == [2, 3]
        # The raw tensor request the demo writes still works, and now carries a label too.
        reply = client.post(url, content=digits.request.read_bytes())
        assert reply.status_code == 200, reply.text
        assert any(o["name"] == "label" for o in reply.json()["outputs"])
        # A broken image is a one-line 400.
        body, head = image_request([png[:20]])
        reply = client.post(
            url, content=body, headers={"Inference-Header-Content-Length": str(head)}
        )
        assert reply.status_code == 400 and "not a readable image" in reply.json()["error"]


@pytest.mark.slow
@needs_torch
def test_shipyard_demo_once_sends_the_png_and_shows_the_label(
    digits: DemoResult, tmp_path: Path
) -> None:
    from shipyard.cli.app import main

    out = io.StringIO()
    argv = ["demo", "--repo", str(tmp_path / "models"), "--no-text", "--once", "--port", "0"]
    with redirect_stdout(out):
        code = main(argv)
    text = " ".join(out.getvalue().split())
    assert code == 0, text
    assert "digits (image: digits_sample.png)" in text, text
    assert "label[1] = [" in text, text
