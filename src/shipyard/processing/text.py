"""Texts to token tensors with a package's tokenizer.json (the Rust `tokenizers` library).

Each request is padded to its own longest text rounded up to `pad_to_multiple` (capped at
`max_length`). Where the graph allows it the batcher pads further, to the batch's longest
(`shipyard.processing.padding`); where it does not, it joins only equal trailing dims, and
rounding still lets requests of similar length share a batch.
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
    return padded([e.ids for e in encodings], [e.type_ids for e in encodings], spec=spec)


def encode_ids(
    rows: Sequence[Sequence[int]], *, spec: TextProcessing, vocab_size: int, name: str = "input"
) -> tuple[dict[str, np.ndarray], int]:
    """Token tensors for token ids a client tokenized itself (`/v1/embeddings`), fed to the
    graph as sent (no special tokens added); each id must be in the vocabulary and each
    row at most `max_length` long, else a 400 naming the row."""
    if not rows:
        raise InputError(f"{name} holds no token ids; send at least one list")
    for index, row in enumerate(rows):
        if not row:
            raise InputError(f"{name}[{index}] is an empty list of token ids")
        if len(row) > spec.max_length:
            raise InputError(
                f"{name}[{index}] has {len(row)} tokens; this model takes at most "
                f"{spec.max_length}: shorten it"
            )
        bad = next((v for v in row if type(v) is not int or not 0 <= v < vocab_size), None)
        if bad is not None:
            raise InputError(
                f"{name}[{index}] holds {bad!r}, not a token id of this model's vocabulary "
                f"(integers 0..{vocab_size - 1})"
            )
    return padded(rows, [[0] * len(row) for row in rows], spec=spec)


def padded(
    id_rows: Sequence[Sequence[int]], type_rows: Sequence[Sequence[int]], *, spec: TextProcessing
) -> tuple[dict[str, np.ndarray], int]:
    """int64 [N, L] tensors: each row, then `pad_id` (mask 0) up to the longest row rounded
    up to `pad_to_multiple`, capped at `max_length`; and the number of real tokens."""
    length = padded_length(max(len(ids) for ids in id_rows), spec=spec)
    ids = np.full((len(id_rows), length), spec.pad_id, dtype=np.int64)
    mask = np.zeros((len(id_rows), length), dtype=np.int64)
    types = np.zeros((len(id_rows), length), dtype=np.int64)
    tokens = 0
    for row, (row_ids, row_types) in enumerate(zip(id_rows, type_rows, strict=True)):
        n = len(row_ids)
        tokens += n
        ids[row, :n] = row_ids
        mask[row, :n] = 1
        types[row, :n] = row_types
    tensors = {spec.input_ids: ids}
    if spec.attention_mask is not None:
        tensors[spec.attention_mask] = mask
    if spec.token_type_ids is not None:
        tensors[spec.token_type_ids] = types
    return tensors, tokens


def padded_length(longest: int, *, spec: TextProcessing) -> int:
    """The length a request whose longest text has `longest` tokens is padded to: rounded
    up to `pad_to_multiple`, capped at `max_length`."""
    step = spec.pad_to_multiple
    return min(spec.max_length, max(step, -(-longest // step) * step))
