"""Text processing on a tiny encoder built in code: pooling ops, tokenizing, serving, auth."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest

import shipyard
from shipyard.errors import InputError, IntegrityError, UsageError
from shipyard.package.graph_specs import graph_signature
from shipyard.processing.build import text_plan
from shipyard.processing.graph import append_pooling
from shipyard.runtime.onnxrt import OnnxRuntime
from shipyard.security.tokens import TokenStore
from shipyard.serving.lifecycle import Server
from shipyard.serving.settings import load_settings

from .tiny import (
    reference_embedding,
    tiny_encoder,
    tiny_sample,
    write_tiny_tokenizer,
)

pytestmark = pytest.mark.timeout(120)


@asynccontextmanager
async def app_client(repo: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = load_settings(repository=repo, poll_interval_s=0, port=0, **overrides)
    app = Server(settings).app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shipyard") as client:
            yield client


def run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    specs_in, specs_out = graph_signature(model)
    runtime = OnnxRuntime(model.SerializeToString(), inputs=specs_in, outputs=specs_out, source="t")
    try:
        return runtime.infer(inputs)
    finally:
        runtime.close()


# ------------------------------------------------------------------------ graph surgery


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_appended_pooling_matches_numpy(pooling: str) -> None:
    pooled = append_pooling(
        tiny_encoder(),
        pooling=pooling,  # type: ignore[arg-type]
        normalize=True,
        attention_mask="attention_mask",
        output="sentence_embedding",
    )
    assert [o.name for o in pooled.graph.output] == ["sentence_embedding"]
    sample = tiny_sample()
    got = run(pooled, sample)["sentence_embedding"]
    want = reference_embedding(sample["input_ids"], sample["attention_mask"], pooling=pooling)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Padding must not move a mean-pooled embedding.
    padded = {k: np.pad(v, ((0, 0), (0, 5))) for k, v in sample.items()}
    np.testing.assert_allclose(run(pooled, padded)["sentence_embedding"], got, atol=1e-6)


def test_pooling_refuses_what_it_cannot_pool() -> None:
    with pytest.raises(UsageError, match="no output 'nope'"):
        append_pooling(
            tiny_encoder(), pooling="mean", normalize=False, attention_mask="attention_mask",
            output="e", token_output="nope",
        )  # fmt: skip
    with pytest.raises(UsageError, match="needs the attention mask"):
        append_pooling(
            tiny_encoder(), pooling="mean", normalize=False, attention_mask=None, output="e"
        )


# ------------------------------------------------------------------------ pack and load


def test_pack_records_processing_and_serves_embeddings_only(tiny_text_repo: Path) -> None:
    model = shipyard.load(tiny_text_repo / "tiny")
    manifest = model.manifest
    assert manifest.processing is not None and manifest.processing.text is not None
    text = manifest.processing.text
    assert (text.max_length, text.truncation, text.pooling, text.normalize) == (
        8,
        True,
        "mean",
        True,
    )
    assert text.tokenizer in manifest.files  # hashed like every package file
    assert [o.name for o in model.outputs] == ["sentence_embedding"]
    assert model.processor is not None
    prepared = model.processor.preprocess({"text": np.array(["hello world", "a"], dtype=object)})
    assert prepared.tokens == 4 + 3
    ids, mask = prepared.inputs["input_ids"], prepared.inputs["attention_mask"]
    assert ids.tolist() == [[2, 4, 5, 3], [2, 6, 3, 0]]  # padded to the multiple of 4
    got = model.infer(prepared.inputs)["sentence_embedding"]
    np.testing.assert_allclose(got, reference_embedding(ids, mask), rtol=1e-5, atol=1e-6)
    model.close()


def test_padding_rounds_up_per_request_and_stops_at_max_length(tiny_text_repo: Path) -> None:
    model = shipyard.load(tiny_text_repo / "tiny")
    assert model.processor is not None
    for words, width in ((1, 4), (2, 4), (3, 8), (20, 8)):
        prepared = model.processor.preprocess(
            {"text": np.array([" ".join(["a"] * words)], dtype=object)}
        )
        assert prepared.inputs["input_ids"].shape == (1, width)
    # Truncated as declared: max_length tokens, the closing [SEP] kept.
    long = model.processor.preprocess({"text": np.array(["a " * 50], dtype=object)})
    assert long.inputs["input_ids"][0].tolist() == [2, 6, 6, 6, 6, 6, 6, 3]
    model.close()


def test_truncation_off_refuses_long_text(tmp_path: Path) -> None:
    tokenizer = write_tiny_tokenizer(tmp_path / "tokenizer.json")
    result = shipyard.pack(
        tiny_encoder(), name="strict", repo=tmp_path / "models", sample_input=tiny_sample(),
        processing=text_plan(tokenizer, max_length=6, truncation=False, pooling="mean"),
    )  # fmt: skip
    model = shipyard.load(result.path)
    assert model.processor is not None
    with pytest.raises(InputError, match="has 10 tokens; this model takes at most 6"):
        model.processor.preprocess({"text": np.array(["a " * 8], dtype=object)})
    model.close()


def test_bad_text_inputs_are_400s(tiny_text_repo: Path) -> None:
    model = shipyard.load(tiny_text_repo / "tiny")
    assert model.processor is not None
    bad = np.array([b"ok", b"\xff\xfe"], dtype=object)
    with pytest.raises(InputError, match=r"element 1 is not UTF-8 text"):
        model.processor.preprocess({"text": bad})
    with pytest.raises(InputError, match="send it alone"):
        model.processor.preprocess({"text": np.array(["a"], dtype=object), **tiny_sample()})
    with pytest.raises(InputError, match="one text per row"):
        model.processor.preprocess({"text": np.array([["a", "b"]], dtype=object)})
    model.close()


def test_tampered_tokenizer_refuses_the_version(tiny_text_repo: Path) -> None:
    tokenizer = tiny_text_repo / "tiny" / "1" / "assets" / "tokenizer.json"
    doc = json.loads(tokenizer.read_text())
    doc["model"]["vocab"]["hello"], doc["model"]["vocab"]["world"] = 5, 4
    tokenizer.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="tokenizer.json"):
        shipyard.load(tiny_text_repo / "tiny")


def test_pack_refuses_a_tokenizer_for_a_graph_without_token_inputs(tmp_path: Path) -> None:
    from tests.conftest import make_affine_onnx

    tokenizer = write_tiny_tokenizer(tmp_path / "tokenizer.json")
    with pytest.raises(UsageError, match="fills 'input_ids'"):
        shipyard.pack(make_affine_onnx(), name="affine", repo=tmp_path / "m",
                      processing=text_plan(tokenizer, pooling="mean"))  # fmt: skip
    with pytest.raises(UsageError, match="no tokenizer.json"):
        text_plan(tmp_path / "nowhere")


def test_compressed_child_keeps_processing_and_pooling(tiny_text_repo: Path) -> None:
    from shipyard.compression.config import DynamicInt8Config
    from shipyard.compression.pipeline import compress

    compress(tiny_text_repo / "tiny", config=DynamicInt8Config(), max_drop=0.5)
    child = shipyard.load(tiny_text_repo / "tiny", version=2)
    parent = shipyard.load(tiny_text_repo / "tiny", version=1)
    assert child.manifest.processing == parent.manifest.processing
    assert [o.name for o in child.outputs] == ["sentence_embedding"]
    assert child.processor is not None and parent.processor is not None
    texts = {"text": np.array(["hello world", "b a"], dtype=object)}
    got = child.infer(child.processor.preprocess(texts).inputs)["sentence_embedding"]
    want = parent.infer(parent.processor.preprocess(texts).inputs)["sentence_embedding"]
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-4)  # still normalised
    assert float(np.min(np.sum(got * want, axis=1))) > 0.99
    child.close()
    parent.close()


# ------------------------------------------------------------------------ over the wire


@pytest.mark.anyio
async def test_v2_tf_and_embeddings_routes_take_text(tiny_text_repo: Path) -> None:
    texts = ["hello world", "a"]
    sample = tiny_sample()
    want = reference_embedding(sample["input_ids"], sample["attention_mask"])
    async with app_client(tiny_text_repo) as client:
        meta = (await client.get("/v2/models/tiny")).json()
        assert meta["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1]}
        assert [i["name"] for i in meta["inputs"][1:]] == ["input_ids", "attention_mask"]
        body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts}]}
        reply = await client.post("/v2/models/tiny/infer", json=body)
        assert reply.status_code == 200, reply.text
        (out,) = reply.json()["outputs"]
        assert out["name"] == "sentence_embedding" and out["shape"] == [2, 4]
        np.testing.assert_allclose(np.reshape(out["data"], (2, 4)), want, atol=1e-5)
        # The raw tensor interface stays.
        raw = {"inputs": [
            {"name": n, "shape": list(a.shape), "datatype": "INT64", "data": a.ravel().tolist()}
            for n, a in sample.items()
        ]}  # fmt: skip
        reply = await client.post("/v2/models/tiny/infer", json=raw)
        np.testing.assert_allclose(
            np.reshape(reply.json()["outputs"][0]["data"], (2, 4)), want, atol=1e-5
        )
        # TF Serving: instances of strings (row) and columnar.
        reply = await client.post("/v1/models/tiny:predict", json={"instances": texts})
        assert reply.status_code == 200, reply.text
        np.testing.assert_allclose(reply.json()["predictions"], want, atol=1e-5)
        reply = await client.post("/v1/models/tiny:predict", json={"inputs": {"text": texts}})
        np.testing.assert_allclose(reply.json()["outputs"], want, atol=1e-5)
        # OpenAI-compatible embeddings, float and base64.
        reply = await client.post("/v1/embeddings", json={"model": "tiny", "input": texts})
        assert reply.status_code == 200, reply.text
        doc = reply.json()
        assert doc["object"] == "list" and doc["model"] == "tiny"
        assert doc["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
        assert [d["index"] for d in doc["data"]] == [0, 1]
        np.testing.assert_allclose([d["embedding"] for d in doc["data"]], want, atol=1e-5)
        reply = await client.post(
            "/v1/embeddings", json={"model": "tiny", "input": "a", "encoding_format": "base64"}
        )
        vector = np.frombuffer(base64.b64decode(reply.json()["data"][0]["embedding"]), "<f4")
        np.testing.assert_allclose(vector, want[1], atol=1e-5)
        # Errors: one line each.
        bad = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [""]}]}
        bad_utf8 = b'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}'
        reply = await client.post(
            "/v2/models/tiny/infer",
            content=bad_utf8 + b"\x02\x00\x00\x00\xff\xfe",
            headers={"Inference-Header-Content-Length": str(len(bad_utf8))},
        )
        assert reply.status_code == 400 and "not UTF-8" in reply.json()["error"]
        assert "\n" not in reply.json()["error"]
        reply = await client.post("/v2/models/tiny/infer", json=bad)
        assert reply.status_code == 200  # an empty text is [CLS] [SEP]
        for payload, status, needle in (
            ({"model": "nope", "input": "a"}, 404, "nope"),
            ({"model": "tiny", "input": []}, 400, "non-empty list"),
            ({"model": "tiny", "input": ["a", 1]}, 400, "not a mix"),
            ({"model": "tiny", "input": "a", "encoding_format": "int8"}, 400, "encoding_format"),
            ({"input": "a"}, 400, '"model"'),
        ):
            reply = await client.post("/v1/embeddings", json=payload)
            assert reply.status_code == status, (payload, reply.text)
            assert needle in reply.json()["error"]


@pytest.mark.anyio
async def test_embeddings_take_token_ids_like_openai(tiny_text_repo: Path) -> None:
    sample = (
        tiny_sample()
    )  # [CLS] hello world [SEP] and [CLS] a [SEP]: what "hello world", "a" make
    want = reference_embedding(sample["input_ids"], sample["attention_mask"])
    rows = [[2, 4, 5, 3], [2, 6, 3]]
    async with app_client(tiny_text_repo) as client:

        async def embed(value: object) -> httpx.Response:
            return await client.post("/v1/embeddings", json={"model": "tiny", "input": value})

        by_text = (await embed(["hello world", "a"])).json()
        reply = await embed(rows)
        assert reply.status_code == 200, reply.text
        doc = reply.json()
        assert doc["usage"] == {"prompt_tokens": 7, "total_tokens": 7} == by_text["usage"]
        got = np.array([d["embedding"] for d in doc["data"]])
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(got, [d["embedding"] for d in by_text["data"]], atol=1e-6)
        # One input as a flat list of ids; base64 too.
        reply = await client.post(
            "/v1/embeddings",
            json={"model": "tiny", "input": [2, 6, 3], "encoding_format": "base64"},
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["prompt_tokens"] == 3
        vector = np.frombuffer(base64.b64decode(reply.json()["data"][0]["embedding"]), "<f4")
        np.testing.assert_allclose(vector, want[1], atol=1e-5)
        # Ids are fed as sent: without [CLS]/[SEP] the answer differs from the text's.
        bare = (await embed([[6]])).json()["data"][0]["embedding"]
        assert not np.allclose(bare, want[1], atol=1e-3)
        for value, needle in (
            ([[2, 8, 3]], '"input"[0] holds 8, not a token id of this model\'s vocabulary '
                          "(integers 0..7)"),
            ([[2, 4], [-1]], '"input"[1] holds -1'),
            ([[2, 4], [2, *[4] * 8]], '"input"[1] has 9 tokens; this model takes at most 8'),
            ([[2, 4], []], '"input"[1] is an empty list of token ids'),
            ([[2, True]], '"input"[0] holds True, not a token id (an integer)'),
            ([[2, 4.0]], '"input"[0] holds 4.0, not a token id'),
            ([[2, 4], "a"], '"input"[0] is not a string'),
        ):  # fmt: skip
            reply = await embed(value)
            assert reply.status_code == 400, (value, reply.text)
            assert needle in reply.json()["error"], (value, reply.text)
            assert "\n" not in reply.json()["error"]


@pytest.mark.anyio
async def test_embeddings_refuse_models_that_do_not_embed(tmp_path: Path) -> None:
    from tests.conftest import make_affine_onnx

    shipyard.pack(make_affine_onnx(), name="affine", repo=tmp_path / "models")
    async with app_client(tmp_path / "models") as client:
        reply = await client.post("/v1/embeddings", json={"model": "affine", "input": "a"})
    assert reply.status_code == 400
    assert "does not turn text into sentence embeddings" in reply.json()["error"]


@pytest.mark.anyio
async def test_embeddings_need_the_models_infer_scope(tiny_text_repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    tokens = {
        "mine": store.create("mine", ["infer:tiny"]),
        "other": store.create("other", ["infer:other"]),
        "meta": store.create("meta", ["metadata:*"]),
    }
    body = {"model": "tiny", "input": "hello"}
    async with app_client(tiny_text_repo, auth=path) as client:
        assert (await client.post("/v1/embeddings", json=body)).status_code == 401

        async def call(token: str) -> int:
            headers = {"Authorization": f"Bearer {tokens[token]}"}
            return (await client.post("/v1/embeddings", json=body, headers=headers)).status_code

        assert await call("mine") == 200
        assert await call("other") == 403  # some infer scope, but not for this model
        assert await call("meta") == 403
