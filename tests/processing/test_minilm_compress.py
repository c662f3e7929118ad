"""`shipyard compress` keeps text processing end to end: the int8 child takes texts too."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from shipyard.cli import main
from shipyard.serving.server import start_in_thread
from shipyard.serving.settings import load_settings

from .conftest import SENTENCES, cosine, needs_text

pytestmark = [needs_text, pytest.mark.timeout(600)]
MIN_COSINE = 0.98


def test_int8_child_answers_text_like_its_parent(minilm_copy: Path) -> None:
    model = minilm_copy / "minilm"
    fast = ("--batch-size", "8", "--runs", "5")
    assert main(["compress", str(model), "--quantize", "int8-dynamic", *fast]) == 0
    (model / "model.toml").write_text("[version_policy]\nall = true\n", encoding="utf-8")
    settings = load_settings(repository=minilm_copy, poll_interval_s=0, port=0, grpc_port=None)
    body = {
        "inputs": [{"name": "text", "shape": [len(SENTENCES)], "datatype": "BYTES",
                    "data": SENTENCES}]
    }  # fmt: skip
    embeddings = {}
    with start_in_thread(settings=settings) as server:
        for version in (1, 2):
            reply = httpx.post(
                f"http://{server.host}:{server.port}/v2/models/minilm/versions/{version}/infer",
                json=body,
                timeout=60,
            )
            assert reply.status_code == 200, reply.text
            (out,) = reply.json()["outputs"]
            assert out["name"] == "sentence_embedding"
            embeddings[version] = np.reshape(out["data"], out["shape"])
    parent, child = embeddings[1], embeddings[2]
    assert child.shape == parent.shape == (len(SENTENCES), 384)
    assert not np.array_equal(child, parent)  # really the quantized graph
    np.testing.assert_allclose(np.linalg.norm(child, axis=1), 1.0, rtol=1e-4)  # still pooled, L2
    assert cosine(child, parent).min() >= MIN_COSINE
