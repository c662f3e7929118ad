"""The benchmark's inputs: the model, its batch-1 sample, the request bodies, the text."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks._rows import BINARY, JSON_, TEXT_BINARY, TEXT_JSON, Bodies, say
from benchmarks._servers import ModelFiles
from shipyard.codecs.v2 import decode_request, encode_request
from shipyard.package.store import list_versions, read_verified


def make_bodies(
    model: ModelFiles, sample: dict[str, np.ndarray], folder: Path, *, text: str | None = None
) -> Bodies:
    folder.mkdir(parents=True)
    files, lengths = {}, {}
    requests = [(JSON_, False, sample), (BINARY, True, sample)]
    if text is not None:
        texts = {"text": np.array([text.encode()], dtype=object)}
        requests += [(TEXT_JSON, False, texts), (TEXT_BINARY, True, texts)]
    for encoding, binary, inputs in requests:
        body, header_length = encode_request(inputs, binary_inputs=binary, binary_outputs=binary)
        files[encoding] = folder / f"{encoding.replace(' ', '-')}.body"
        files[encoding].write_bytes(body)
        lengths[encoding] = header_length
    npz = folder / "inputs.npz"
    np.savez(npz, **sample)  # type: ignore[arg-type]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model.onnx), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(names, sample), strict=True))
    return Bodies(files, lengths, sample, expected, npz, text=text)


def text_for(model: ModelFiles, sample: dict[str, np.ndarray]) -> str | None:
    """The sentence whose tokens are the sample's `input_ids`, when the package takes text.

    Decoded with the package's own tokenizer and checked by encoding it again the way the
    server does (padding included), so text-in and token-ids-in rows run the same tensors.
    """
    spec = read_verified(model.version_dir).processing
    if spec is None or spec.text is None or spec.text.input_ids not in sample:
        return None
    from shipyard.processing.text import encode, load_tokenizer

    data = (model.version_dir / spec.text.tokenizer).read_bytes()
    tokenizer = load_tokenizer(data, spec=spec.text, where=str(model.version_dir))
    ids = sample[spec.text.input_ids]
    text = tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)
    tensors, _ = encode(tokenizer, [text], spec=spec.text)
    if tensors[spec.text.input_ids].tolist() != ids.tolist():
        say(
            f"{model.name}: the text-in sentence tokenizes to {tensors[spec.text.input_ids].shape}"
            f" tokens, not {ids.shape} as the token-id rows send (use --tokens as a multiple "
            f"of pad_to_multiple={spec.text.pad_to_multiple}); text rows are not like for like"
        )
    return text


def load_model(
    repo: Path, name: str, *, tokens: int = 16
) -> tuple[ModelFiles, dict[str, np.ndarray]]:
    """The latest version of `name` in `repo` and a batch-1 sample input for it.

    A text model (inputs `input_ids` + `attention_mask`) gets one sentence of exactly
    `tokens` tokens: the demo request's first sentence, its words repeated to that length
    between [CLS] and [SEP], no padding.
    """
    versions = list_versions(repo / name)
    if not versions:
        raise SystemExit(f"{repo / name}: no packaged version; build the demo or pass --repo")
    version_dir = repo / name / str(versions[-1])
    manifest = read_verified(version_dir)
    model = ModelFiles(
        name=name,
        version_dir=version_dir,
        inputs=tuple((t.name, t.v2_datatype, tuple(t.shape)) for t in manifest.inputs),
        outputs=tuple((t.name, t.v2_datatype, tuple(t.shape)) for t in manifest.outputs),
    )
    request = repo / "requests" / f"{name}.json"
    if request.is_file():
        decoded = decode_request(request.read_bytes()).inputs
        sample = {k: np.ascontiguousarray(v[:1]) for k, v in decoded.items()}
        if {"input_ids", "attention_mask"} <= sample.keys():
            sample = _fixed_length(sample, tokens)
    else:
        rng = np.random.default_rng(0)
        sample = {
            t.name: rng.standard_normal([1 if d == -1 else d for d in t.shape]).astype(t.dtype)
            for t in manifest.inputs
        }
    return model, sample


def _fixed_length(sample: dict[str, np.ndarray], tokens: int) -> dict[str, np.ndarray]:
    ids = sample["input_ids"][0][sample["attention_mask"][0] != 0]
    first, words, last = ids[:1], ids[1:-1], ids[-1:]
    if len(words) == 0:
        words = ids
    body = np.resize(words, tokens - 2)
    row = np.concatenate([first, body, last]).astype(sample["input_ids"].dtype)[None, :]
    out = dict(sample)
    out["input_ids"] = row
    out["attention_mask"] = np.ones_like(row, dtype=sample["attention_mask"].dtype)
    return out


def build_repo(models: Sequence[str], folder: Path) -> Path:
    from shipyard.demo.build import build_demo_repository

    build_demo_repository(folder, include_text="minilm" in models, only=list(models), progress=say)
    return folder
