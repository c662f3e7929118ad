"""A loaded version's processing: raw request inputs to graph tensors, outputs to labels.

The data plane calls `preprocess` before a request joins a batch and `postprocess` on
its own result; requests that send the graph's tensors themselves pass through untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from shipyard.errors import InputError, IntegrityError
from shipyard.package.tensorspec import TensorSpec
from shipyard.processing import labels as labels_mod
from shipyard.processing.image import decode_images
from shipyard.processing.padding import BatchPadding
from shipyard.processing.spec import TOP_LABELS_OUTPUT, TOP_SCORES_OUTPUT, Processing
from shipyard.processing.text import encode, encode_ids, load_tokenizer, texts_of

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ReadFile = Callable[[str], bytes]
"""Verified bytes of a package file by its relative path."""


@dataclass(frozen=True)
class Prepared:
    """Graph tensors for one request and what processing counted on the way."""

    inputs: dict[str, np.ndarray]
    tokens: int = 0
    """Real (non-padding) tokens, for usage reports."""
    processed: bool = False


class Processor:
    """Runs one version's declared processing; built once at load time."""

    def __init__(
        self,
        spec: Processing,
        *,
        tokenizer: Tokenizer | None = None,
        batch_padding: BatchPadding | None = None,
    ) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.batch_padding = batch_padding
        """How the batcher may pad tokenized requests of different lengths into one batch
        (`shipyard.processing.padding`); None: requests batch only with equal lengths."""

    @classmethod
    def load(
        cls,
        spec: Processing,
        *,
        read_file: ReadFile,
        where: str,
        batch_padding: BatchPadding | None = None,
    ) -> Processor:
        tokenizer = None
        if spec.text is not None:
            data = read_file(spec.text.tokenizer)
            tokenizer = load_tokenizer(data, spec=spec.text, where=f"{where}/{spec.text.tokenizer}")
        return cls(spec, tokenizer=tokenizer, batch_padding=batch_padding)

    # -- signature ------------------------------------------------------------------------

    @property
    def input_specs(self) -> list[TensorSpec]:
        """The raw inputs processing adds (the text or image BYTES input)."""
        specs = []
        if self.spec.text is not None:
            specs.append(TensorSpec(name=self.spec.text.input, dtype="str", shape=(-1,)))
        if self.spec.image is not None:
            specs.append(TensorSpec(name=self.spec.image.input, dtype="str", shape=(-1,)))
        return specs

    def output_specs(self, outputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        """The outputs processing adds (class labels, top-k)."""
        labels = self.spec.labels
        if labels is None:
            return []
        specs = [TensorSpec(name=labels.label_output, dtype="str", shape=(-1,))]
        if labels.top_k > 1:
            scores = next((o for o in outputs if o.name == labels.scores), None)
            dtype = scores.dtype if scores is not None else "float32"
            specs.append(TensorSpec(name=TOP_LABELS_OUTPUT, dtype="str", shape=(-1, -1)))
            specs.append(TensorSpec(name=TOP_SCORES_OUTPUT, dtype=dtype, shape=(-1, -1)))
        return specs

    @property
    def embedding_output(self) -> str | None:
        return self.spec.text.embedding_output if self.spec.text is not None else None

    # -- requests -------------------------------------------------------------------------

    def preprocess(self, inputs: Mapping[str, np.ndarray]) -> Prepared:
        """Graph tensors for `inputs`: processed when they hold the raw input, else as sent."""
        raw = [s.name for s in self.input_specs if s.name in inputs]
        if not raw:
            return Prepared(dict(inputs))
        if len(inputs) != 1:
            others = sorted(set(inputs) - set(raw))
            raise InputError(
                f"input {raw[0]!r} is processed by the server; send it alone, without {others}"
            )
        array = inputs[raw[0]]
        text = self.spec.text
        if text is not None and self.tokenizer is not None:
            tensors, tokens = encode(self.tokenizer, texts_of(array, name=text.input), spec=text)
            return Prepared(tensors, tokens=tokens, processed=True)
        image = self.spec.image
        assert image is not None
        return Prepared({image.tensor: decode_images(array, spec=image)}, processed=True)

    def token_inputs(self, rows: Sequence[Sequence[int]], *, name: str = "input") -> Prepared:
        """Graph tensors for token ids sent as such (checked against the vocabulary and
        `max_length`, padded like tokenized text); InputError without text processing."""
        text = self.spec.text
        if text is None or self.tokenizer is None:
            raise InputError("this model takes no token ids (its package has no tokenizer)")
        vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        tensors, tokens = encode_ids(rows, spec=text, vocab_size=vocab, name=name)
        return Prepared(tensors, tokens=tokens, processed=True)

    def graph_outputs(self, requested: Sequence[str]) -> list[str]:
        """The graph outputs to compute for `requested` (empty: all) output names."""
        labels = self.spec.labels
        if labels is None or not requested:
            return list(requested)
        added = set(labels_mod.output_names(labels))
        graph = [n for n in requested if n not in added]
        if len(graph) < len(requested) and labels.scores not in graph:
            graph.append(labels.scores)
        return graph

    def postprocess(
        self, outputs: dict[str, np.ndarray], requested: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Outputs with labels added, then only those `requested` (empty: all), in order."""
        labels = self.spec.labels
        if labels is None or labels.scores not in outputs:
            return outputs
        combined = {**outputs, **labels_mod.label_outputs(outputs[labels.scores], spec=labels)}
        if not requested:
            return combined
        return {n: combined[n] for n in requested}


def verified_reader(
    version_dir_files: Mapping[str, str],
    root: str,
    *,
    decrypted: Mapping[str, bytes] | None = None,
) -> ReadFile:
    """A reader that re-hashes each file it reads against the manifest's sha256.

    `decrypted`: an encrypted package's assets, decrypted in memory (their plaintext sha256
    was checked on decryption); such an asset is never read from, or written to, disk."""
    import hashlib
    from pathlib import Path

    def read(relative: str) -> bytes:
        if decrypted is not None and relative in decrypted:
            return decrypted[relative]
        expected = version_dir_files.get(relative)
        path = Path(root) / relative
        if expected is None:
            raise IntegrityError(str(path), "is not listed in the manifest's files")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise IntegrityError(str(path), f"cannot be read ({exc.strerror})") from exc
        if hashlib.sha256(data).hexdigest() != expected:
            raise IntegrityError(str(path), "sha256 does not match the manifest")
        return data

    return read
