"""What a request is checked against before it can join a batch: the model name, the version,
the requested outputs and inputs (`runtime.check_inputs`, once per request), and declared
text/image processing.

The data plane calls these; `check_model_name` is also the TF Serving transport's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from shipyard.errors import InputError, UsageError
from shipyard.processing.runtime import Prepared, Processor
from shipyard.runtime.base import check_inputs
from shipyard.serving.errors import ModelNotFound
from shipyard.serving.version_state import ServedVersion

MAX_MODEL_NAME = 128
"""The longest model name a manifest allows; longer names are refused on every route."""


def check_model_name(name: str) -> str:
    """`name`, or a 400 when it is longer than any model name can be (MAX_MODEL_NAME, the
    manifest's own limit): a 5,000-character name reached the file system (a 500)."""
    if len(name) > MAX_MODEL_NAME:
        raise UsageError(
            f"model name of {len(name)} characters: model names are at most "
            f"{MAX_MODEL_NAME} (letters, digits, '_', '.', '-')"
        )
    return name


def version_number(name: str, version: str | None) -> int | None:
    check_model_name(name)
    if version is None or version == "":
        return None
    if not version.isdigit() or version.startswith("0"):
        raise ModelNotFound(name, version)
    return int(version)


def validated(
    served: ServedVersion,
    inputs: dict[str, Any],
    output_names: list[str],
    asked: list[str] | None = None,
) -> dict[str, Any]:
    """Check one request on its own before it can join a batch."""
    if output_names and any(n not in served.output_names for n in output_names):
        known = list(served.output_names)
        processor = served.model.processor
        if processor is not None:
            known += [s.name for s in processor.output_specs(served.model.outputs)]
        unknown = [n for n in (asked or output_names) if n not in known]
        raise InputError(f"unknown output(s) {unknown}; model {served.name!r} has {known}")
    signature = _signature(inputs)
    accepted = served.accepted_inputs
    specs = served.model.inputs
    if signature is not None and signature in accepted:
        # what `check_inputs` would return: each of them as it is, in the model's order
        return dict(inputs) if len(inputs) == 1 else {s.name: inputs[s.name] for s in specs}
    checked = check_inputs(specs, dict(inputs))
    if (
        signature is not None
        and len(accepted) < MAX_SIGNATURES
        and all(checked[name] is array for name, array in inputs.items())
    ):
        accepted.add(signature)
    return checked


MAX_SIGNATURES = 64
"""Input signatures a version remembers as accepted unchanged (`validated`)."""

Signature = tuple[tuple[str, Any, tuple[int, ...]], ...]


def _signature(inputs: dict[str, Any]) -> Signature | None:
    """(name, dtype, shape) of each input, in order, when all are C-contiguous numpy arrays
    (else None: checked in full).

    `check_inputs` decides from exactly these (and the arrays' type and layout): a request
    whose signature it once returned unchanged (no reshape, cast or copy: nothing that
    depends on the values) passes unchanged again, so its checks are one set look-up. What
    it changes or refuses is never remembered and is checked in full each time."""
    if len(inputs) == 1:  # most models: one input
        ((name, array),) = inputs.items()
        if type(array) is not np.ndarray or not array.flags.c_contiguous:
            return None
        return ((name, array.dtype, array.shape),)
    parts = []
    for name, array in inputs.items():
        if type(array) is not np.ndarray or not array.flags.c_contiguous:
            return None
        parts.append((name, array.dtype, array.shape))
    return tuple(parts)


async def prepare_inputs(processor: Processor, inputs: dict[str, Any]) -> Prepared:
    """Processed inputs; big batches and images are tokenized/decoded off the event loop
    (the tokenizers library and Pillow release the GIL)."""
    raw = [inputs[s.name] for s in processor.input_specs if s.name in inputs]
    if not raw:
        return Prepared(inputs)
    if processor.spec.image is None and raw[0].size <= INLINE_TEXTS:
        return processor.preprocess(inputs)
    return await asyncio.to_thread(processor.preprocess, inputs)


INLINE_TEXTS = 16
"""Up to this many texts are tokenized on the event loop (tens of microseconds each)."""
