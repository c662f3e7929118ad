"""Inputs synthesized from the graph, the trial run at pack time, and ONNX Runtime errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from tests.graphs import TYPES, VOCAB, bert_like, bert_reference, ragged_triples, vad_like

import shipyard
from shipyard.errors import ConversionError, InputError
from shipyard.package.graph_specs import graph_signature
from shipyard.runtime.synthesis import candidates, graph_hints, synthesize_feed


def test_bert_inputs_stay_inside_their_embeddings_and_masks_are_ones() -> None:
    model = bert_like()
    hints = graph_hints(model)
    assert hints["input_ids"].upper == VOCAB
    assert hints["token_type_ids"].upper == TYPES
    inputs, _ = graph_signature(model)
    for feed in candidates(inputs, hints):
        assert feed["input_ids"].max() < VOCAB
        assert (feed["token_type_ids"] == 0).all()
        assert (feed["attention_mask"] == 1).all()
        # dims named alike ("batch", "sequence") get one size across inputs
        assert len({a.shape for a in feed.values()}) == 1


def test_scalar_compared_with_a_constant_takes_that_constant() -> None:
    model = vad_like()
    inputs, _ = graph_signature(model)
    feed = synthesize_feed(inputs, graph_hints(model), batch=2, other=8)
    assert feed["sr"].shape == () and int(feed["sr"]) == 16000
    # the state's batch axis (1) is named like the audio's batch axis (0): same size
    assert feed["state"].shape == (2, 2, 1) and feed["input"].shape == (2, 8)


def test_bert_like_export_packs_without_a_sample(tmp_path: Path) -> None:
    """Before: token types drawn from 0..7 against 2 rows failed the Gather."""
    path = tmp_path / "bert.onnx"
    onnx.save(bert_like(), str(path))
    result = shipyard.pack(path, name="bert", repo=tmp_path / "models")
    assert result.manifest.warmup is not None and result.manifest.warmup.synthesized
    model = shipyard.load(result.path)
    feed = {
        "input_ids": np.array([[3, 29, 0]]),
        "attention_mask": np.array([[1, 1, 0]]),
        "token_type_ids": np.array([[0, 1, 1]]),
    }
    np.testing.assert_allclose(
        model.infer(feed)["last_hidden_state"], bert_reference(feed), rtol=1e-6
    )
    model.close()


def test_trial_on_synthesized_inputs_that_fail_names_the_sample_flag(tmp_path: Path) -> None:
    path = tmp_path / "triples.onnx"
    onnx.save(ragged_triples(), str(path))
    with pytest.raises(ConversionError) as caught:
        shipyard.pack(path, name="triples", repo=tmp_path / "models")
    message = str(caught.value)
    assert "synthesized inputs" in message and "--sample-input" in message
    assert "x float32[?, ?]" in message and "\n" not in message
    assert not (tmp_path / "models" / "triples").exists() or not list(
        (tmp_path / "models" / "triples").iterdir()
    )
    # with a real sample it packs, and the sample travels with the version
    sample = tmp_path / "x.npz"
    np.savez(sample, x=np.arange(12, dtype=np.float32).reshape(2, 6))
    result = shipyard.pack(path, name="triples", repo=tmp_path / "models", sample_input=sample)
    assert result.manifest.warmup is not None and not result.manifest.warmup.synthesized
    assert (result.path / "samples" / "warmup.npz").is_file()
    assert "samples/warmup.npz" in result.manifest.files


def test_request_faults_caught_by_onnx_runtime_are_input_errors(tmp_path: Path) -> None:
    path = tmp_path / "bert.onnx"
    onnx.save(bert_like(), str(path))
    model = shipyard.load(shipyard.pack(path, name="bert", repo=tmp_path / "m").path)
    ok = np.zeros((1, 3), np.int64)
    with pytest.raises(InputError, match=r"Gather node failed: indices element out of data"):
        model.infer({"input_ids": ok + VOCAB + 5, "attention_mask": ok, "token_type_ids": ok})
    with pytest.raises(InputError, match=r"broadcast") as caught:
        model.infer(
            {"input_ids": ok, "attention_mask": np.zeros((1, 2), np.int64), "token_type_ids": ok}
        )
    assert "\n" not in str(caught.value) and "onnxruntime_src" not in str(caught.value)
    model.close()


def test_onnx_runtime_prints_nothing_on_a_failed_run(tmp_path: Path) -> None:
    """ONNX Runtime's own red log line must not reach the terminal; our error says it all."""
    path = tmp_path / "bert.onnx"
    onnx.save(bert_like(), str(path))
    shipyard.pack(path, name="bert", repo=tmp_path / "m")
    script = (
        "import numpy as np, shipyard\n"
        f"m = shipyard.load({str(tmp_path / 'm' / 'bert')!r})\n"
        "ids = np.full((1, 3), 99, np.int64)\n"
        "try:\n"
        "    m.infer({'input_ids': ids, 'attention_mask': ids, 'token_type_ids': ids})\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert run.stdout.strip() == "InputError"
    assert "onnxruntime" not in run.stderr and "Gather" not in run.stderr, run.stderr
