"""Texts of different lengths share a batch: token inputs padded per batch, not per request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from shipyard.processing.padding import BatchPadding, batch_padding
from shipyard.processing.spec import TextProcessing
from shipyard.serving.batching import Batcher
from shipyard.serving.settings import BatchingSettings

from .conftest import cosine
from .test_text import app_client
from .tiny import tiny_encoder

pytestmark = pytest.mark.timeout(120)
TEXT = TextProcessing(max_length=8, pad_id=0)


def graph(
    seq: str | int | None = "seq", outputs: list[tuple[str, list[str | int | None]]] | None = None
) -> onnx.ModelProto:
    """A graph signature only (no nodes are run): token inputs [batch, seq] and `outputs`."""
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", seq])
        for n in ("input_ids", "attention_mask")
    ]
    outs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)
        for name, dims in outputs or [("pooled", ["batch", 4])]
    ]
    return helper.make_model(helper.make_graph([], "g", inputs, outs))


def test_padding_is_declared_only_where_the_graph_allows_it() -> None:
    pooled = batch_padding(TEXT, graph())
    assert pooled == BatchPadding({"input_ids": 0, "attention_mask": 0}, frozenset())
    tokens = batch_padding(TEXT, tiny_encoder())  # last_hidden_state [batch, seq, 4]
    assert tokens is not None and tokens.seq_outputs == {"last_hidden_state"}
    with_types = TEXT.model_copy(update={"token_type_ids": "token_type_ids", "pad_id": 3})
    model = graph()
    model.graph.input.append(
        helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "seq"])
    )
    assert batch_padding(with_types, model) == BatchPadding(
        {"input_ids": 3, "attention_mask": 0, "token_type_ids": 0}, frozenset()
    )
    for refused in (
        graph(seq=128),  # a fixed sequence axis
        graph(seq=None),  # dynamic but unnamed: cannot tell which outputs follow it
        graph(outputs=[("tokens", ["batch", "seq", "width"])]),  # another dynamic dim
        graph(outputs=[("pairs", ["batch", 4, "seq"])]),  # the sequence axis elsewhere
        graph(outputs=[("other", ["batch", "other"])]),
    ):
        assert batch_padding(TEXT, refused) is None
    no_mask = TEXT.model_copy(update={"attention_mask": None})
    assert batch_padding(no_mask, graph()) is None  # nothing would mask the padding


@pytest.mark.anyio
async def test_the_batcher_pads_to_the_longest_and_cuts_outputs_back() -> None:
    pad = BatchPadding({"input_ids": 9, "attention_mask": 0}, frozenset({"tokens"}))
    feeds: list[dict[str, np.ndarray]] = []

    def run(feed: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        feeds.append(feed)
        ids, mask = feed["input_ids"], feed["attention_mask"]
        return {
            "tokens": ids[..., None].astype(np.float32),
            "count": mask.sum(axis=1, keepdims=True).astype(np.float32),
        }

    settings = BatchingSettings(max_batch_size=3, max_queue_delay_us=10_000_000)
    batcher = Batcher(run, name="t", batching=settings, inline_max_us=0)

    def request(lengths: list[int], width: int) -> dict[str, np.ndarray]:
        ids = np.zeros((len(lengths), width), np.int64)
        mask = np.zeros_like(ids)
        for row, n in enumerate(lengths):
            ids[row, :n], mask[row, :n] = np.arange(1, n + 1), 1
        return {"input_ids": ids, "attention_mask": mask}

    try:
        short, long = request([2], 4), request([7, 5], 8)
        results = await asyncio.gather(
            batcher.submit(short, pad=pad), batcher.submit(long, pad=pad)
        )
    finally:
        await batcher.close()
    (feed,) = feeds  # one run for both requests
    assert feed["input_ids"].shape == (3, 8)
    assert feed["input_ids"][0].tolist() == [1, 2, 0, 0, 9, 9, 9, 9]  # padded with the pad id
    assert feed["attention_mask"][0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    first, second = results
    assert first.batch_rows == second.batch_rows == 3
    assert first.outputs["tokens"].shape == (1, 4, 1)  # its own length again
    assert first.outputs["tokens"][0, :, 0].tolist() == [1, 2, 0, 0]
    assert second.outputs["tokens"].shape == (2, 8, 1)
    assert first.outputs["count"].tolist() == [[2.0]]  # pooled: unchanged, split by rows
    assert second.outputs["count"].tolist() == [[7.0], [5.0]]


@pytest.mark.anyio
async def test_without_padding_lengths_do_not_share_a_batch() -> None:
    feeds: list[int] = []

    def run(feed: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        feeds.append(feed["input_ids"].shape[0])
        return {"n": feed["input_ids"][:, :1].astype(np.float32)}

    settings = BatchingSettings(max_batch_size=2, max_queue_delay_us=0)
    batcher = Batcher(run, name="t", batching=settings, inline_max_us=0)
    ids = [np.ones((1, n), np.int64) for n in (4, 8)]
    try:
        await asyncio.gather(*(batcher.submit({"input_ids": a, "attention_mask": a}) for a in ids))
    finally:
        await batcher.close()
    assert feeds == [1, 1]


@pytest.mark.anyio
async def test_mixed_length_texts_batched_together_embed_as_alone(tiny_text_repo: Path) -> None:
    texts = ["a", "hello world a b a b"]  # 3 and 8 tokens: padded to 4 and 8 alone
    batching = {"max_batch_size": 2, "max_queue_delay_us": 10_000_000}
    async with app_client(tiny_text_repo) as client:
        alone = [
            (await client.post("/v1/embeddings", json={"model": "tiny", "input": t})).json()
            for t in texts
        ]
    async with app_client(tiny_text_repo, batching=batching) as client:
        together = await asyncio.gather(
            *(client.post("/v1/embeddings", json={"model": "tiny", "input": t}) for t in texts)
        )
        stats = (await client.get("/v2/models/tiny/stats")).json()
    batches = stats["model_stats"][0]["batch_stats"]
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in batches] == [(2, 1)]
    for single, joined in zip(alone, together, strict=True):
        assert joined.status_code == 200, joined.text
        want = np.array([single["data"][0]["embedding"]])
        got = np.array([joined.json()["data"][0]["embedding"]])
        assert cosine(got, want)[0] >= 0.9999
        assert joined.json()["usage"] == single["usage"]
