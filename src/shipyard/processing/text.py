"""Texts to token tensors with a package's tokenizer.json (the Rust `tokenizers` library).

Each request is padded to its own longest text rounded up to `pad_to_multiple` (capped at
`max_length`): the batcher only joins requests whose trailing dims agree, so rounding lets
requests of similar length share a batch, while a request never pays for a longer one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from shipyard.errors import InputError, IntegrityError, UsageError
from shipyard.processing.spec import TextProcessing

if TYPE_CHECKING:
    from tokenizers import Tokenizer


def load_tokenizer(data: bytes, *, spec: TextProcessing, where: str) -> Tokenizer:
    """The tokenizer from verified bytes, set up as `spec` says (no padding: done here)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:  # pragma: no cover - tokenizers comes with transformers
        raise UsageError(
            "text processing needs the `tokenizers` library; pip install tokenizers"
        ) from exc
    try:
        tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:
        raise IntegrityError(where, f"not a readable tokenizer.json ({exc})") from exc
    tokenizer.no_padding()
    if spec.truncation:  # the tokenizer's own truncation keeps the special tokens ([SEP])
        tokenizer.enable_truncation(max_length=spec.max_length)
    else:
        tokenizer.no_truncation()
    return tokenizer


def texts_of(array: np.ndarray, *, name: str) -> list[str]:
    """The texts of a BYTES input ([N] or [N, 1]); non-UTF-8 bytes are a 400."""
    if array.dtype != object and array.dtype.kind not in "US":
        raise InputError(f"input {name!r} takes BYTES (strings), got {array.dtype}")
    if not (array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1)):
        raise InputError(
            f"input {name!r} has shape {list(array.shape)}; send one text per row, shape [N]"
        )
    if array.shape[0] == 0:
        raise InputError(f"input {name!r} holds no text; send at least one")
    texts = []
    for index, item in enumerate(array.reshape(-1).tolist()):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"input {name!r} element {index} is not UTF-8 text (byte {exc.start})"
                ) from None
        elif not isinstance(item, str):
            raise InputError(f"input {name!r} element {index} is not a string")
        texts.append(item)
    return texts


def encode(
    tokenizer: Tokenizer, texts: Sequence[str], *, spec: TextProcessing
) -> tuple[dict[str, np.ndarray], int]:
    """The graph's token tensors (int64 [N, L]) for `texts`, and the number of real tokens."""
    encodings = tokenizer.encode_batch(list(texts))
    longest = max(len(e.ids) for e in encodings)
    if longest > spec.max_length:  # only when truncation is off
        index = next(i for i, e in enumerate(encodings) if len(e.ids) > spec.max_length)
        raise InputError(
            f"text {index} has {len(encodings[index].ids)} tokens; this model takes at most "
            f"{spec.max_length} (truncation is off): shorten it"
        )
    step = spec.pad_to_multiple
    length = min(spec.max_length, max(step, -(-longest // step) * step))
    ids = np.full((len(encodings), length), spec.pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), length), dtype=np.int64)
    types = np.zeros((len(encodings), length), dtype=np.int64)
    tokens = 0
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        tokens += n
        ids[row, :n] = encoding.ids
        mask[row, :n] = 1
        types[row, :n] = encoding.type_ids
    tensors = {spec.input_ids: ids}
    if spec.attention_mask is not None:
        tensors[spec.attention_mask] = mask
    if spec.token_type_ids is not None:
        tensors[spec.token_type_ids] = types
    return tensors, tokens
