"""The MiniLM package with declared processing, on a real server, equals SentenceTransformer."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shipyard.serving.server import RunningServer, start_in_thread
from shipyard.serving.settings import load_settings

from .conftest import SENTENCES, cosine, needs_text

pytestmark = [needs_text, pytest.mark.timeout(300)]
MIN_COSINE = 0.9999
LONG = " ".join(["shipyard packs models and serves them over many protocols"] * 60)


@pytest.fixture(scope="module")
def server(minilm_repo: Path) -> Iterator[RunningServer]:
    settings = load_settings(repository=minilm_repo, poll_interval_s=0, port=0, grpc_port=0)
    with start_in_thread(settings=settings) as running:
        yield running
    assert not running.running


@pytest.fixture(scope="module")
def expected(sentence_model: Any) -> np.ndarray:
    return np.asarray(sentence_model.encode([*SENTENCES, LONG], convert_to_numpy=True))


def url(server: RunningServer, path: str) -> str:
    return f"http://{server.host}:{server.port}{path}"


def test_v2_json_text_equals_sentence_transformers(
    server: RunningServer, expected: np.ndarray
) -> None:
    texts = [*SENTENCES, LONG]  # the long one is over 256 tokens: truncated as declared
    body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    reply = httpx.post(url(server, "/v2/models/minilm/infer"), json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    (out,) = reply.json()["outputs"]
    got = np.reshape(out["data"], out["shape"])
    assert got.shape == (len(texts), 384)
    assert cosine(got, expected).min() >= MIN_COSINE


def test_v2_binary_with_tritonclient(server: RunningServer, expected: np.ndarray) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"{server.host}:{server.port}", network_timeout=60)
    try:
        meta = client.get_model_metadata("minilm")
        assert [i["name"] for i in meta["inputs"]] == ["text", "input_ids", "attention_mask"]
        texts = np.array([s.encode() for s in SENTENCES], dtype=object)
        item = triton.InferInput("text", [len(SENTENCES)], "BYTES")
        item.set_data_from_numpy(texts, binary_data=True)
        result = client.infer(
            "minilm",
            [item],
            outputs=[triton.InferRequestedOutput("sentence_embedding", binary_data=True)],
        )
        got = result.as_numpy("sentence_embedding")
    finally:
        client.close()
    assert got is not None
    assert cosine(got, expected[: len(SENTENCES)]).min() >= MIN_COSINE


def test_v2_grpc_text_equals_http(server: RunningServer, expected: np.ndarray) -> None:
    import tritonclient.grpc as triton_grpc

    texts = [*SENTENCES, LONG]
    body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    reply = httpx.post(url(server, "/v2/models/minilm/infer"), json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    (out,) = reply.json()["outputs"]
    over_http = np.reshape(out["data"], out["shape"])

    assert server.grpc_port
    client = triton_grpc.InferenceServerClient(f"{server.host}:{server.grpc_port}")
    try:
        item = triton_grpc.InferInput("text", [len(texts)], "BYTES")
        item.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
        result = client.infer(
            "minilm", [item], outputs=[triton_grpc.InferRequestedOutput("sentence_embedding")]
        )
        over_grpc = result.as_numpy("sentence_embedding")
    finally:
        client.close()
    assert over_grpc is not None and over_grpc.shape == (len(texts), 384)
    # The same tokens and the same graph: equal up to JSON's float printing.
    np.testing.assert_allclose(over_grpc, over_http, rtol=1e-5, atol=1e-6)
    assert cosine(over_grpc, expected).min() >= MIN_COSINE


def test_tf_serving_instances_and_raw_tokens(server: RunningServer, expected: np.ndarray) -> None:
    from shipyard.demo.text import model_dir, tokenize

    reply = httpx.post(
        url(server, "/v1/models/minilm:predict"), json={"instances": SENTENCES}, timeout=60
    )
    assert reply.status_code == 200, reply.text
    assert (
        cosine(np.array(reply.json()["predictions"]), expected[: len(SENTENCES)]).min()
        >= MIN_COSINE
    )
    # Token ids computed by the client still work on the same package.
    tokens = tokenize(SENTENCES, model_dir() / "tokenizer.json")
    raw = {"inputs": [
        {"name": n, "shape": list(a.shape), "datatype": "INT64", "data": a.ravel().tolist()}
        for n, a in tokens.items()
    ]}  # fmt: skip
    reply = httpx.post(url(server, "/v2/models/minilm/infer"), json=raw, timeout=60)
    out = reply.json()["outputs"][0]
    assert (
        cosine(np.reshape(out["data"], out["shape"]), expected[: len(SENTENCES)]).min()
        >= MIN_COSINE
    )


def test_embeddings_with_httpx_and_concurrent_requests(
    server: RunningServer, expected: np.ndarray
) -> None:
    texts = [*SENTENCES, LONG]

    def one(i: int) -> np.ndarray:
        body = {"model": "minilm", "input": texts[i % len(texts)]}
        reply = httpx.post(url(server, "/v1/embeddings"), json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        doc = reply.json()
        assert doc["usage"]["prompt_tokens"] > 0
        return np.array(doc["data"][0]["embedding"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(20)))
    for i, vector in enumerate(results):
        assert cosine(vector[None], expected[i % len(texts)][None])[0] >= MIN_COSINE


def test_openai_client(server: RunningServer, expected: np.ndarray) -> None:
    openai = pytest.importorskip("openai", reason="pip install openai")
    client = openai.OpenAI(base_url=url(server, "/v1"), api_key="unused", timeout=60, max_retries=0)
    response = client.embeddings.create(model="minilm", input=SENTENCES)  # base64 by default
    got = np.array([d.embedding for d in response.data])
    assert response.model == "minilm" and response.usage.prompt_tokens > 0
    assert cosine(got, expected[: len(SENTENCES)]).min() >= MIN_COSINE
    floats = client.embeddings.create(model="minilm", input="short", encoding_format="float")
    assert cosine(np.array([floats.data[0].embedding]), expected[2:3])[0] >= MIN_COSINE
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")


def test_openai_client_token_ids_equal_text(server: RunningServer, expected: np.ndarray) -> None:
    openai = pytest.importorskip("openai", reason="pip install openai")
    from tokenizers import Tokenizer

    from shipyard.demo.text import model_dir

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    rows = [e.ids for e in tokenizer.encode_batch(SENTENCES)]
    with openai.OpenAI(
        base_url=url(server, "/v1"), api_key="unused", timeout=60, max_retries=0
    ) as client:
        response = client.embeddings.create(model="minilm", input=rows)
        got = np.array([d.embedding for d in response.data])
        assert cosine(got, expected[: len(SENTENCES)]).min() >= MIN_COSINE
        assert response.usage.prompt_tokens == sum(len(r) for r in rows)
        one = client.embeddings.create(model="minilm", input=rows[2], encoding_format="float")
        assert cosine(np.array([one.data[0].embedding]), expected[2:3])[0] >= MIN_COSINE
        for bad, needle in (
            ([[101] * 300], '"input"[0] has 300 tokens; this model takes at most 256'),
            ([[101, 30522, 102]], "integers 0..30521"),
        ):
            with pytest.raises(openai.BadRequestError) as caught:
                client.embeddings.create(model="minilm", input=bad)
            assert needle in str(caught.value.body)  # the client hands over our "error"


def test_texts_of_different_lengths_share_a_batch(minilm_repo: Path, expected: np.ndarray) -> None:
    import shipyard

    model = shipyard.load(minilm_repo / "minilm")
    assert model.processor is not None and model.processor.batch_padding is not None
    model.close()
    texts = [SENTENCES[2], SENTENCES[3], LONG]  # 3, ~20 and 256 tokens
    settings = load_settings(
        repository=minilm_repo,
        poll_interval_s=0,
        port=0,
        batching={"max_batch_size": len(texts), "max_queue_delay_us": 60_000_000},
    )
    with start_in_thread(settings=settings) as running:

        def one(text: str) -> np.ndarray:
            body = {"model": "minilm", "input": text}
            reply = httpx.post(url(running, "/v1/embeddings"), json=body, timeout=60)
            assert reply.status_code == 200, reply.text
            return np.array(reply.json()["data"][0]["embedding"])

        with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
            got = np.stack(list(pool.map(one, texts)))
        stats = httpx.get(url(running, "/v2/models/minilm/stats"), timeout=10).json()
    batches = stats["model_stats"][0]["batch_stats"]
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in batches] == [(3, 1)]
    want = expected[[2, 3, len(SENTENCES)]]
    assert cosine(got, want).min() >= MIN_COSINE
