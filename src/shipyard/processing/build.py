"""Pack-time processing: options to a `Processing` spec, its files, and the graph it needs.

`text_plan(tokenizer=...)`, `image_plan(...)` and `labels` options make a `ProcessingPlan`;
`finalize` checks it against the converted graph (input names, the scores output), fills
what the graph tells (token inputs present, classes from metadata), and appends pooling.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import onnx
from pydantic import ValidationError

from shipyard.errors import UsageError
from shipyard.processing.graph import append_pooling
from shipyard.processing.spec import (
    TOKENIZER_FILE,
    ImageProcessing,
    LabelProcessing,
    Pooling,
    Processing,
    TextProcessing,
)

DEFAULT_MAX_LENGTH = 512
FROM_METADATA = "metadata"
"""`labels=FROM_METADATA`: take the class names from the model's metadata `classes`."""


@dataclass(frozen=True)
class ProcessingPlan:
    """What `pack(..., processing=plan)` declares: the spec and the package files it needs."""

    text: TextProcessing | None = None
    image: ImageProcessing | None = None
    labels: Sequence[str] | str | None = None
    """Class names, or FROM_METADATA."""
    top_k: int = 1
    scores_output: str | None = None
    token_output: str | None = None
    """The graph output pooling reads (default: the first)."""
    files: Mapping[str, bytes | Path] = field(default_factory=dict)


def text_plan(
    tokenizer: str | Path,
    *,
    max_length: int | None = None,
    truncation: bool = True,
    pooling: Pooling | None = None,
    normalize: bool = False,
    pad_to_multiple: int = 16,
    embedding_output: str | None = "sentence_embedding",
    token_output: str | None = None,
) -> ProcessingPlan:
    """Text in through `tokenizer` (a tokenizer.json, or a folder holding one).

    `max_length` defaults to the folder's sentence-transformers `max_seq_length`, else the
    tokenizer's `model_max_length`, else the truncation tokenizer.json records, else 512.
    """
    path = Path(tokenizer)
    folder = path if path.is_dir() else path.parent
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(
            f"{file}: no tokenizer.json; pass a Hugging Face fast tokenizer's tokenizer.json "
            "or its folder (tokenizer.save_pretrained(DIR) writes one)"
        )
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{file}: not a readable tokenizer.json ({exc})") from exc
    length = max_length or _max_length(folder, doc)
    padding = doc.get("padding") or {}
    pad_id: Any = padding.get("pad_id")
    if not isinstance(pad_id, int):
        vocab = (doc.get("model") or {}).get("vocab")
        pad_id = vocab.get("[PAD]", vocab.get("<pad>", 0)) if isinstance(vocab, dict) else 0
    try:
        spec = TextProcessing(
            max_length=length,
            truncation=truncation,
            pad_to_multiple=pad_to_multiple,
            pad_id=int(pad_id),
            pooling=pooling,
            normalize=normalize,
            embedding_output=embedding_output,
        )
    except ValidationError as exc:
        raise UsageError(f"text processing: {_first_error(exc)}") from exc
    return ProcessingPlan(text=spec, token_output=token_output, files={TOKENIZER_FILE: file})


def image_plan(option: str, *, tensor: str | None = None) -> ProcessingPlan:
    """Images in, from the CLI's `--image "size=8x8,mode=L,scale=1/16,layout=NCHW"` text."""
    values: dict[str, Any] = {"tensor": tensor or ""}
    for part in filter(None, (p.strip() for p in option.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise UsageError(f"--image: {part!r} is not KEY=VALUE (e.g. size=224x224,mode=RGB)")
        try:
            if key == "size":
                width, _, height = value.lower().partition("x")
                values["width"], values["height"] = int(width), int(height or width)
            elif key in ("scale",):
                values[key] = float(Fraction(value))
            elif key in ("mean", "std"):
                values[key] = tuple(float(Fraction(v)) for v in value.split("/"))
            elif key in ("max_bytes", "max_pixels"):
                values[key] = int(value)
            elif key in ("channel_dim", "flatten"):
                values[key] = value.lower() in ("1", "true", "yes")
            elif key in ("mode", "layout", "dtype", "input", "tensor"):
                values[key] = value.strip()
            else:
                raise UsageError(
                    f"--image: unknown key {key!r}; use size, mode, layout, scale, mean, std, "
                    "dtype, channel_dim, flatten, max_bytes, max_pixels, input, tensor"
                )
        except ValueError as exc:
            raise UsageError(f"--image: {part!r}: {exc}") from exc
    if "width" not in values:
        raise UsageError("--image needs size=WxH (e.g. size=224x224)")
    try:
        spec = ImageProcessing(**values)
    except ValidationError as exc:
        raise UsageError(f"--image: {_first_error(exc)}") from exc
    return ProcessingPlan(image=spec)


def parse_labels(option: str) -> list[str] | str:
    """`--labels a,b,c`, `--labels @classes.txt` (one per line) or `--labels metadata`."""
    if option == FROM_METADATA:
        return FROM_METADATA
    if option.startswith("@"):
        path = Path(option[1:])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"--labels {option}: cannot read ({exc.strerror})") from exc
        names = [line.strip() for line in lines if line.strip()]
    else:
        names = [name.strip() for name in option.split(",")]
    if not names or any(not n for n in names):
        raise UsageError(f"--labels {option!r}: empty class name; use a,b,c or @FILE")
    return names


def combine(*plans: ProcessingPlan | None) -> ProcessingPlan | None:
    """One plan from the CLI's separate text/image/labels options."""
    present = [p for p in plans if p is not None]
    if not present:
        return None
    merged = present[0]
    for plan in present[1:]:
        merged = replace(
            merged,
            text=merged.text or plan.text,
            image=merged.image or plan.image,
            labels=merged.labels if merged.labels is not None else plan.labels,
            top_k=max(merged.top_k, plan.top_k),
            scores_output=merged.scores_output or plan.scores_output,
            token_output=merged.token_output or plan.token_output,
            files={**merged.files, **plan.files},
        )
    return merged


def finalize(
    plan: ProcessingPlan | Processing, model: onnx.ModelProto, *, metadata: Mapping[str, Any]
) -> tuple[Processing, onnx.ModelProto, dict[str, bytes | Path]]:
    """The manifest's `processing`, the graph to package (pooling appended) and the files."""
    if isinstance(plan, Processing):
        plan = ProcessingPlan(text=plan.text, image=plan.image)
        labels_given = None
    else:
        labels_given = plan.labels
    graph_inputs = {i.name: i for i in model.graph.input}
    text = plan.text
    if text is not None:
        if text.input_ids not in graph_inputs:
            raise UsageError(
                f"text processing fills {text.input_ids!r}, but the graph takes "
                f"{sorted(graph_inputs)}"
            )
        text = text.model_copy(
            update={
                "attention_mask": text.attention_mask
                if text.attention_mask in graph_inputs
                else None,
                "token_type_ids": "token_type_ids" if "token_type_ids" in graph_inputs else None,
            }
        )
        extra = sorted(
            set(graph_inputs) - {text.input_ids, text.attention_mask, text.token_type_ids}
        )
        if extra:
            raise UsageError(f"text processing cannot fill graph input(s) {extra}")
        if text.pooling is not None or text.normalize:
            model = append_pooling(
                model,
                pooling=text.pooling,
                normalize=text.normalize,
                attention_mask=text.attention_mask,
                output=text.embedding_output or "sentence_embedding",
                token_output=plan.token_output,
            )
    image = plan.image
    if image is not None:
        if not image.tensor:
            if len(graph_inputs) != 1:
                raise UsageError(
                    f"the graph takes {sorted(graph_inputs)}; name the pixel input "
                    "with --image tensor=NAME"
                )
            image = image.model_copy(update={"tensor": next(iter(graph_inputs))})
        elif image.tensor not in graph_inputs:
            raise UsageError(
                f"--image tensor={image.tensor}: the graph takes {sorted(graph_inputs)}"
            )
    labels = _labels(plan, labels_given, model, metadata)
    spec = Processing(text=text, image=image, labels=labels)
    return spec, model, dict(plan.files)


def _labels(
    plan: ProcessingPlan,
    given: Sequence[str] | str | None,
    model: onnx.ModelProto,
    metadata: Mapping[str, Any],
) -> LabelProcessing | None:
    if given is None:
        return None
    if given == FROM_METADATA:
        classes = metadata.get("classes")
        if not isinstance(classes, list) or not classes:
            raise UsageError("--labels metadata: the model's metadata has no 'classes'")
        names = [str(c) for c in classes]
    else:
        names = list(given)
    outputs = [o for o in model.graph.output if len(o.type.tensor_type.shape.dim) == 2]
    if plan.scores_output is not None:
        scores = plan.scores_output
        if scores not in {o.name for o in model.graph.output}:
            raise UsageError(f"--scores-output {scores}: the graph has no such output")
    else:
        floats = [o for o in outputs if o.type.tensor_type.elem_type in (1, 10, 11)]
        preferred = [o for o in floats if o.name in ("probabilities", "probs", "logits", "scores")]
        chosen = preferred or floats
        if not chosen:
            raise UsageError("--labels: the graph has no [N, classes] float output to label")
        scores = chosen[0].name
    dims = next(o for o in model.graph.output if o.name == scores).type.tensor_type.shape.dim
    if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value != len(names):
        raise UsageError(
            f"--labels: {len(names)} class names for output {scores!r} of {dims[1].dim_value} "
            "columns"
        )
    return LabelProcessing(scores=scores, classes=names, top_k=plan.top_k)


def _max_length(folder: Path, doc: Mapping[str, Any]) -> int:
    for name, key in (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
    ):
        try:
            value = json.loads((folder / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, int) and 0 < value < 1_000_000:
            return value
    truncation = doc.get("truncation") or {}
    value = truncation.get("max_length") if isinstance(truncation, dict) else None
    return value if isinstance(value, int) and value > 0 else DEFAULT_MAX_LENGTH


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
