"""The `processing` manifest field: text, image and label handling declared as data.

A package carries its pre- and post-processing as a schema, never as code: the server
reads these classes and runs fixed, audited steps (`shipyard.processing.runtime`). Files
they name (a tokenizer.json) are package files, hashed and signed like the model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TEXT_INPUT = "text"
IMAGE_INPUT = "image"
EMBEDDING_OUTPUT = "sentence_embedding"
LABEL_OUTPUT = "label"
TOP_LABELS_OUTPUT = "top_labels"
TOP_SCORES_OUTPUT = "top_scores"
TOKENIZER_FILE = "assets/tokenizer.json"
ASSETS_DIR = "assets/"
"""Package files under this folder are processing assets: encrypted with the model."""

Pooling = Literal["mean", "cls"]


class TextProcessing(BaseModel):
    """Strings in: a Hugging Face tokenizer.json turns them into the graph's token tensors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: str = TEXT_INPUT
    """The BYTES input clients send texts on (shape [-1]: one text per row)."""
    tokenizer: str = TOKENIZER_FILE
    """The package file holding the tokenizer (run by the `tokenizers` library)."""
    max_length: int = Field(ge=1)
    """Most tokens per text, special tokens included."""
    truncation: bool = True
    """Cut longer texts to max_length; when false such a text is a 400."""
    pad_to_multiple: int = Field(default=16, ge=1)
    """Pad each request to the next multiple of this (capped at max_length), so requests of
    similar length share a shape even where the batcher cannot pad per batch."""
    pad_id: int = Field(default=0, ge=0)
    input_ids: str = "input_ids"
    attention_mask: str | None = "attention_mask"
    token_type_ids: str | None = None
    """Graph inputs filled from the encodings (token types: the tokenizer's type ids)."""
    pooling: Pooling | None = None
    """Pooling appended to the graph at pack time (None: the graph already pools)."""
    normalize: bool = False
    """L2 normalisation appended after pooling at pack time."""
    embedding_output: str | None = EMBEDDING_OUTPUT
    """The [N, D] output holding one sentence embedding per text (enables /v1/embeddings);
    None when the model is not an embedder."""


class ImageProcessing(BaseModel):
    """Encoded images (PNG, JPEG …) in: decoded by Pillow into the graph's pixel tensor."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: str = IMAGE_INPUT
    """The BYTES input clients send encoded images on (shape [-1]: one image per row)."""
    tensor: str
    """The graph input the pixels go to."""
    width: int = Field(ge=1, le=16384)
    height: int = Field(ge=1, le=16384)
    mode: Literal["L", "RGB"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    """How the tensor holds pixels; a grey-scale NCHW tensor has one channel."""
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    """Per-channel (one value: every channel): pixel * scale, minus mean, over std."""
    dtype: Literal["float32", "float16", "uint8"] = "float32"
    channel_dim: bool = True
    """False when the graph takes [N, H, W] with no channel axis (grey-scale only)."""
    flatten: bool = False
    """True when the graph takes [N, H*W*C] (a flat feature vector)."""
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    """Largest encoded image accepted."""
    max_pixels: int = Field(default=40_000_000, ge=1)
    """Largest decoded width*height accepted, checked before decoding (pixel bombs)."""

    @model_validator(mode="after")
    def _check(self) -> ImageProcessing:
        channels = 1 if self.mode == "L" else 3
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise ValueError(f"{name} needs 1 or {channels} values for mode {self.mode}")
        if any(v == 0 for v in self.std):
            raise ValueError("std values must not be 0")
        return self


class LabelProcessing(BaseModel):
    """Scores out: class names for a classifier's [N, C] scores output."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scores: str
    """The [N, C] output the labels index."""
    classes: list[str] = Field(min_length=1)
    top_k: int = Field(default=1, ge=1)
    """With top_k > 1, `top_labels` and `top_scores` [N, k] are added beside `label`."""
    label_output: str = LABEL_OUTPUT


class Processing(BaseModel):
    """What the server does around the graph; every part optional."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: TextProcessing | None = None
    image: ImageProcessing | None = None
    labels: LabelProcessing | None = None

    def files(self) -> list[str]:
        """The package files this processing reads at load time."""
        return [self.text.tokenizer] if self.text is not None else []

    @model_validator(mode="after")
    def _one_input_kind(self) -> Processing:
        if self.text is not None and self.image is not None:
            raise ValueError("a package takes text or images, not both")
        if self.text is None and self.image is None and self.labels is None:
            raise ValueError("processing declares nothing; leave it out instead")
        return self
