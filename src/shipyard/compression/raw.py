"""Eval and calibration data for compress/compare: graph tensors, or raw texts and images.

`load_data` reads `--eval`/`--calibration`: an .npz of graph tensors as before
(`data.load_dataset`), or, for a package that declares processing, raw rows
(`raw_files`) run one at a time through the version's own `Processor`, the code the
server runs on a request, with its limits. Calibration, fidelity, speed and accuracy then
see the tensors a client's texts and images become. A row the server would refuse (not
UTF-8, too long without truncation, not an image, too many pixels) is a one-line
CompressionConfigError naming its file and row.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from shipyard.compression.data import DataLike, Dataset, TokenLengths, load_dataset
from shipyard.compression.errors import CompressionConfigError
from shipyard.compression.raw_files import (
    TEXT_SUFFIXES,
    Label,
    RawRows,
    is_raw_path,
    read_image_folder,
    read_raw_arrays,
    read_text_file,
)
from shipyard.errors import InputError
from shipyard.package.manifest import Manifest
from shipyard.processing.runtime import Processor, verified_reader
from shipyard.processing.spec import LabelProcessing, Processing
from shipyard.processing.text import padded

_ROW_PREFIX = re.compile(r"^(?:input '[^']*' element \d+:? |text \d+ )")
"""How the Processor names the element of a request; replaced by the file and row."""


def load_data(data: DataLike, manifest: Manifest, version_dir: Path, *, what: str) -> Dataset:
    """`data` for the version `manifest` (at `version_dir`) describes; `what` ("eval",
    "calibration") names it in errors."""
    rows = _raw_rows(data, manifest.processing, what)
    if rows is None:
        return load_dataset(data, manifest.inputs, what=what)
    assert manifest.processing is not None
    processor = Processor.load(
        manifest.processing,
        read_file=verified_reader(
            {p: f.sha256 for p, f in manifest.files.items()}, str(version_dir)
        ),
        where=str(version_dir),
    )
    return processed(rows, processor, manifest, what=what)


def processed(rows: RawRows, processor: Processor, manifest: Manifest, *, what: str) -> Dataset:
    """The graph tensors `processor` makes of `rows`: each row processed as one request,
    texts then joined as one request of them all would be (padded to the longest)."""
    spec = processor.spec
    name = processor.input_specs[0].name
    prepared = []
    for item, where in zip(rows.items, rows.where, strict=True):
        try:
            prepared.append(processor.preprocess({name: np.array([item], dtype=object)}))
        except InputError as exc:
            raise CompressionConfigError(_row_error(where, exc.message)) from None
    tokens = None
    if spec.text is not None:
        text = spec.text
        counts = [p.tokens for p in prepared]
        ids = [
            p.inputs[text.input_ids][0, :n].tolist() for p, n in zip(prepared, counts, strict=True)
        ]
        types = [
            p.inputs[text.token_type_ids][0, :n].tolist() if text.token_type_ids else [0] * n
            for p, n in zip(prepared, counts, strict=True)
        ]
        tensors, _ = padded(ids, types, spec=text)
        tokens = TokenLengths(text, np.asarray(counts, dtype=np.int64))
        described = f"{len(prepared)} texts"
    else:
        assert spec.image is not None
        tensor = spec.image.tensor
        tensors = {tensor: np.concatenate([p.inputs[tensor] for p in prepared])}
        described = f"{len(prepared)} images"
    dataset = load_dataset(tensors, manifest.inputs, what=what)
    return replace(
        dataset,
        labels=_labels(rows, spec.labels),
        source=f"{rows.source} ({described}, processed like requests to v{manifest.version})",
        raw=rows.kind,
        tokens=tokens,
    )


def same_processing(first: Manifest, second: Manifest) -> bool:
    """Whether two versions turn raw inputs into the same tensors: equal declarations and
    the same bytes in the files they read (the tokenizer)."""
    if first.processing != second.processing:
        return False
    files = first.processing.files() if first.processing is not None else []
    return all(
        f in first.files and f in second.files and first.files[f].sha256 == second.files[f].sha256
        for f in files
    )


def _raw_rows(data: DataLike, processing: Processing | None, what: str) -> RawRows | None:
    """The raw rows in `data`; None when it holds graph tensors."""
    path = Path(data) if isinstance(data, str | Path) else None
    text = processing.text if processing is not None else None
    image = processing.image if processing is not None else None
    if text is None and image is None:
        if path is not None and is_raw_path(path):
            raise CompressionConfigError(
                f"{path}: raw {what} data (texts, images) needs a package that declares text "
                "or image processing; this one takes graph tensors only: give an .npz with "
                "one array per input, named like the input"
            )
        return None
    if isinstance(data, np.ndarray):
        return None
    if path is not None and path.is_dir():
        if image is None:
            raise CompressionConfigError(
                f"{path}: a folder of images, but this package takes text: give a .txt or "
                ".jsonl file"
            )
        return read_image_folder(path, what=what, max_bytes=image.max_bytes)
    if path is not None and path.suffix.lower() in TEXT_SUFFIXES:
        if text is None:
            raise CompressionConfigError(
                f"{path}: texts, but this package takes images: give a folder of images"
            )
        return read_text_file(path, what=what)
    arrays = path if path is not None else data
    assert not isinstance(arrays, str | np.ndarray)
    if text is not None:
        return read_raw_arrays(arrays, raw_input=text.input, kind="text", what=what)
    assert image is not None
    return read_raw_arrays(arrays, raw_input=image.input, kind="images", what=what)


def _labels(rows: RawRows, spec: LabelProcessing | None) -> np.ndarray | None:
    """Class names when the package declares them (a class index maps to its name), else
    class indices; a label the package does not know is an error naming the row."""
    if rows.labels is None:
        return None
    classes = spec.classes if spec is not None else None
    found: list[Label] = []
    for label, where in zip(rows.labels, rows.where, strict=True):
        if classes is None:
            if isinstance(label, str) and not label.isdigit():
                raise CompressionConfigError(
                    f"{where}: label {label!r} is not a class index, and this package declares "
                    "no class names (processing labels): use indices 0..C-1, or repack with "
                    "--labels"
                )
            found.append(int(label))
        elif isinstance(label, int):
            if not 0 <= label < len(classes):
                raise CompressionConfigError(
                    f"{where}: label {label} is not a class index of this package "
                    f"(0..{len(classes) - 1})"
                )
            found.append(classes[label])
        elif label in classes:
            found.append(label)
        else:
            shown = ", ".join(classes[:12]) + (", …" if len(classes) > 12 else "")
            raise CompressionConfigError(
                f"{where}: label {label!r} is not one of this package's classes ({shown})"
            )
    if classes is None:
        return np.asarray(found, dtype=np.int64)
    return np.asarray(found, dtype=str)


def _row_error(where: str, message: str) -> str:
    """The Processor's message about a request element, about the file and row instead."""
    rest = _ROW_PREFIX.sub("", message, count=1)
    return f"{where}{' ' if rest.startswith(('is ', 'has ')) else ': '}{rest}"
