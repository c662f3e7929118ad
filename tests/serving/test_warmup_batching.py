"""Warm-up with the stored sample, lenient/strict warm-up, and batching for any signature."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from tests.graphs import (
    bert_like,
    bert_reference,
    ragged_triples,
    row_mixing,
    vad_like,
    vad_reference,
)

import shipyard
from shipyard.codecs import InferenceRequest
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.lifecycle import build_dataplane
from shipyard.serving.settings import ServerSettings

pytestmark = pytest.mark.anyio


def _pack(repo: Path, name: str, model: onnx.ModelProto, **kwargs: Any) -> Path:
    path = repo.parent / f"{name}.onnx"
    onnx.save(model, str(path))
    return shipyard.pack(path, name=name, repo=repo, **kwargs).path


async def _started(settings: ServerSettings) -> DataPlane:
    plane = build_dataplane(settings)
    await plane.manager.start()
    return plane


def _rows(plane_index: list[dict[str, str]], name: str) -> dict[str, tuple[str, str]]:
    return {
        r.get("version", ""): (r["state"], r["reason"]) for r in plane_index if r["name"] == name
    }


async def test_bert_like_version_serves_and_warms_with_its_sample(
    repo: Path, settings_for: Callable[..., ServerSettings], caplog: pytest.LogCaptureFixture
) -> None:
    """Before: warm-up drew token types from 0..7 against 2 rows; the version was refused."""
    feed = {
        "input_ids": np.array([[5, 7, 9], [1, 2, 3]]),
        "attention_mask": np.ones((2, 3), np.int64),
        "token_type_ids": np.array([[0, 0, 1], [0, 1, 1]]),
    }
    sample = repo.parent / "bert.npz"
    np.savez(sample, **feed)
    _pack(repo, "bert", bert_like(), sample_input=sample)
    _pack(repo, "bert_nosample", bert_like(), keep_sample=False)
    plane = await _started(settings_for(repo))
    try:
        for name in ("bert", "bert_nosample"):
            assert _rows(await plane.repository_index(), name)["1"][0] == "READY"
            response = await plane.infer(name, InferenceRequest(inputs=feed), protocol="test")
            np.testing.assert_allclose(
                response.outputs["last_hidden_state"], bert_reference(feed), rtol=1e-6
            )
        assert "warm-up" not in caplog.text
    finally:
        await plane.manager.stop()


async def test_warmup_failure_on_synthesized_inputs_warns_unless_strict_and_config_reloads(
    repo: Path, settings_for: Callable[..., ServerSettings], caplog: pytest.LogCaptureFixture
) -> None:
    sample = repo.parent / "x.npz"
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    np.savez(sample, x=x)
    _pack(repo, "triples", ragged_triples(), sample_input=sample, keep_sample=False)
    config = repo / "triples" / "model.toml"
    config.write_text('warmup = "strict"\n')
    plane = await _started(settings_for(repo))
    try:
        state, reason = _rows(await plane.repository_index(), "triples")["1"]
        assert state == "UNAVAILABLE" and "synthesized inputs" in reason
        assert "--sample-input" in reason
        # the fix the message suggests is picked up by the next scan (before: never retried)
        config.write_text("warmup = true\n")
        await plane.manager.refresh()
        assert _rows(await plane.repository_index(), "triples")["1"][0] == "READY"
        assert "serving it anyway" in caplog.text
        response = await plane.infer("triples", InferenceRequest(inputs={"x": x}), protocol="t")
        np.testing.assert_array_equal(response.outputs["y"], -x)
    finally:
        await plane.manager.stop()


async def test_stored_sample_that_fails_refuses_the_version(
    repo: Path, settings_for: Callable[..., ServerSettings]
) -> None:
    """A user's own sample failing at warm-up means the version cannot serve here."""
    sample = repo.parent / "x.npz"
    np.savez(sample, x=np.ones((1, 3), np.float32))
    version = _pack(repo, "triples", ragged_triples(), sample_input=sample)
    manifest = shipyard.load(version).manifest
    assert manifest.warmup is not None and not manifest.warmup.synthesized
    plane = await _started(settings_for(repo, warmup=True))
    try:
        assert _rows(await plane.repository_index(), "triples")["1"][0] == "READY"
    finally:
        await plane.manager.stop()


async def _concurrent(plane: DataPlane, name: str, feeds: list[dict[str, np.ndarray]]) -> list[Any]:
    return await asyncio.gather(
        *(plane.infer(name, InferenceRequest(inputs=f), protocol="test") for f in feeds)
    )


async def test_scalar_and_axis_one_state_inputs_are_never_stacked(
    repo: Path, settings_for: Callable[..., ServerSettings], caplog: pytest.LogCaptureFixture
) -> None:
    """16 concurrent different requests each get their own answer, batching forced on."""
    rng = np.random.default_rng(1)
    feeds = [
        {
            "input": rng.standard_normal((2, 16)).astype(np.float32),
            "state": rng.standard_normal((2, 2, 1)).astype(np.float32),
            "sr": np.array(16000 if i % 2 else 8000, np.int64),
        }
        for i in range(16)
    ]
    sample = repo.parent / "vad.npz"
    np.savez(sample, **feeds[0])
    _pack(repo, "vad", vad_like(), sample_input=sample)
    (repo / "vad" / "model.toml").write_text(
        "[batching]\nenabled = true\nmax_queue_delay_us = 20000\n"
    )
    plane = await _started(settings_for(repo))
    try:
        responses = await _concurrent(plane, "vad", feeds)
        for feed, response in zip(feeds, responses, strict=True):
            want = vad_reference(feed)
            for name in ("output", "stateN"):
                np.testing.assert_allclose(response.outputs[name], want[name], rtol=1e-5)
        assert "batching turned off" in caplog.text and "not a batch axis" in caplog.text
    finally:
        await plane.manager.stop()


async def test_dynamic_dim_zero_that_is_not_a_batch_axis_is_found_at_load(
    repo: Path, settings_for: Callable[..., ServerSettings], caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((1, 2)).astype(np.float32)} for _ in range(16)]
    sample = repo.parent / "mix.npz"
    np.savez(sample, x=rng.standard_normal((2, 2)).astype(np.float32))
    _pack(repo, "mix", row_mixing(), sample_input=sample)
    (repo / "mix" / "model.toml").write_text("[batching]\nmax_queue_delay_us = 20000\n")
    plane = await _started(settings_for(repo))
    try:
        assert not plane.manager.get("mix").batcher.enabled
        responses = await _concurrent(plane, "mix", feeds)
        for feed, response in zip(feeds, responses, strict=True):
            np.testing.assert_allclose(response.outputs["y"], feed["x"] * 2, rtol=1e-6)
        assert "changes when two requests are joined" in caplog.text
    finally:
        await plane.manager.stop()


async def test_batchable_model_keeps_batching(
    repo: Path, settings_for: Callable[..., ServerSettings]
) -> None:
    _pack(repo, "bert", bert_like())
    plane = await _started(settings_for(repo))
    try:
        assert plane.manager.get("bert").batcher.enabled
    finally:
        await plane.manager.stop()


async def test_request_faults_answer_400_with_one_line(
    repo: Path, settings_for: Callable[..., ServerSettings], app_client: Callable[..., Any]
) -> None:
    _pack(repo, "bert", bert_like())

    def tensor(name: str, data: list[int], shape: list[int]) -> dict[str, Any]:
        return {"name": name, "datatype": "INT64", "shape": shape, "data": data}

    async with app_client(settings_for(repo)) as client:
        out_of_vocab = {
            "inputs": [
                tensor("input_ids", [1, 2, 300], [1, 3]),
                tensor("attention_mask", [1, 1, 1], [1, 3]),
                tensor("token_type_ids", [0, 0, 0], [1, 3]),
            ]
        }
        lengths = {
            "inputs": [
                tensor("input_ids", [1, 2, 3], [1, 3]),
                tensor("attention_mask", [1, 1], [1, 2]),
                tensor("token_type_ids", [0, 0, 0], [1, 3]),
            ]
        }
        for body, words in ((out_of_vocab, "out of data bounds"), (lengths, "broadcast")):
            reply = await client.post("/v2/models/bert/infer", json=body)
            assert reply.status_code == 400, reply.text
            error = reply.json()["error"]
            assert words in error and "\n" not in error
        assert (await client.get("/v2/health/ready")).status_code == 200
