"""Image bytes in and labels out on a tiny classifier built in code."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import shipyard
from shipyard.errors import InputError, UsageError
from shipyard.processing.build import ProcessingPlan, combine, image_plan, parse_labels
from shipyard.processing.image import decode_image

from .test_text import app_client
from .tiny import tiny_classifier

pytestmark = pytest.mark.timeout(120)
DIGITS = [str(d) for d in range(10)]


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def pixel_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims a huge canvas (no pixel data worth decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def digits_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    plan = combine(
        image_plan("size=8x8,mode=L,scale=1/16,max_pixels=1000000"),
        ProcessingPlan(labels=parse_labels(",".join(DIGITS)), top_k=3),
    )
    sample = {"x": np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)}
    shipyard.pack(tiny_classifier(), name="digits", repo=repo, sample_input=sample, processing=plan)
    return repo


def test_image_option_parsing() -> None:
    plan = image_plan("size=224x200,mode=RGB,scale=1/255,mean=0.5/0.5/0.5,std=0.25,layout=NHWC")
    assert plan.image is not None
    assert (plan.image.width, plan.image.height, plan.image.layout) == (224, 200, "NHWC")
    assert plan.image.scale == pytest.approx(1 / 255) and plan.image.mean == (0.5, 0.5, 0.5)
    for bad, needle in (("mode=L", "needs size"), ("size=8x8,colour=red", "unknown key"),
                        ("size=8x8,mode=L,mean=1/2/3/4", "mean needs 1 or 1")):  # fmt: skip
        with pytest.raises(UsageError, match=needle):
            image_plan(bad)


def test_decoded_image_equals_the_raw_tensor_path(digits_repo: Path) -> None:
    model = shipyard.load(digits_repo / "digits")
    assert model.processor is not None and model.processor.spec.image is not None
    pixels = (np.arange(64).reshape(8, 8) * 4 % 256).astype(np.uint8)
    tensor = decode_image(png(pixels), spec=model.processor.spec.image)
    np.testing.assert_allclose(tensor, pixels[None].astype(np.float32) / 16)
    raw = model.infer({"x": (pixels[None, None] / 16).astype(np.float32)})["probabilities"]
    prepared = model.processor.preprocess({"image": np.array([png(pixels)], dtype=object)})
    np.testing.assert_allclose(model.infer(prepared.inputs)["probabilities"], raw, rtol=1e-6)
    # A bigger RGB image is converted and resized to the declared 8x8 grey-scale.
    big = np.random.default_rng(2).integers(0, 255, (32, 24, 3), dtype=np.uint8)
    assert decode_image(png(big), spec=model.processor.spec.image).shape == (1, 8, 8)
    model.close()


def test_bad_images_are_400s(digits_repo: Path) -> None:
    model = shipyard.load(digits_repo / "digits")
    assert model.processor is not None and model.processor.spec.image is not None
    spec = model.processor.spec.image
    with pytest.raises(InputError, match="not a readable image"):
        decode_image(b"not an image at all", spec=spec)
    with pytest.raises(InputError, match="too many pixels"):  # Pillow's own bomb check
        decode_image(pixel_bomb(), spec=spec)
    with pytest.raises(InputError, match="2000x2000 pixels; images are at most 1000000"):
        decode_image(pixel_bomb(2000, 2000), spec=spec)  # ours, from the header alone
    with pytest.raises(InputError, match="not text"):
        decode_image("abc", spec=spec)
    model.close()


@pytest.mark.anyio
async def test_image_in_labels_out_over_v2_and_tf(digits_repo: Path) -> None:
    import base64

    pixels = (np.arange(64).reshape(8, 8) * 3 % 256).astype(np.uint8)
    data = png(pixels)
    async with app_client(digits_repo) as client:
        meta = (await client.get("/v2/models/digits")).json()
        assert meta["inputs"][0] == {"name": "image", "datatype": "BYTES", "shape": [-1]}
        assert [o["name"] for o in meta["outputs"]] == [
            "probabilities",
            "label",
            "top_labels",
            "top_scores",
        ]
        header = (
            b'{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES",'
            b'"parameters":{"binary_data_size":%d}}]}' % (len(data) + 4)
        )
        reply = await client.post(
            "/v2/models/digits/infer",
            content=header + struct.pack("<I", len(data)) + data,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert reply.status_code == 200, reply.text
        outputs = {o["name"]: o for o in reply.json()["outputs"]}
        probs = np.array(outputs["probabilities"]["data"])
        assert outputs["label"]["data"] == [str(int(np.argmax(probs)))]
        assert outputs["top_labels"]["shape"] == [1, 3]
        assert outputs["top_labels"]["data"][0] == outputs["label"]["data"][0]
        # Only the label, when asked for only it.
        body = {
            "inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32",
                        "data": (pixels / 16).ravel().tolist()}],
            "outputs": [{"name": "label"}],
        }  # fmt: skip
        reply = await client.post("/v2/models/digits/infer", json=body)
        assert [o["name"] for o in reply.json()["outputs"]] == ["label"]
        assert reply.json()["outputs"][0]["data"] == outputs["label"]["data"]
        # TF Serving: b64 image instances.
        b64 = base64.b64encode(data).decode()
        reply = await client.post("/v1/models/digits:predict", json={"instances": [{"b64": b64}]})
        assert reply.status_code == 200, reply.text
        assert reply.json()["predictions"][0]["label"] == outputs["label"]["data"][0]
        for bad in (b"garbage", pixel_bomb()):
            item = base64.b64encode(bad).decode()
            reply = await client.post(
                "/v1/models/digits:predict", json={"instances": [{"b64": item}]}
            )
            assert reply.status_code == 400, reply.text
            assert "\n" not in reply.json()["error"]


def test_labels_must_fit_the_scores_output(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="3 class names for output 'probabilities' of 10"):
        shipyard.pack(tiny_classifier(), name="d", repo=tmp_path / "m",
                      sample_input={"x": np.zeros((1, 1, 8, 8), np.float32)},
                      processing=ProcessingPlan(labels=["a", "b", "c"]))  # fmt: skip
