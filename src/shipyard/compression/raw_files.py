"""Raw eval and calibration rows read from files: texts and encoded images, with labels.

Formats (`docs/compression.md`, "Raw texts and images"):

- `.txt`: one text per line (UTF-8; blank lines skipped), no labels;
- `.jsonl`: one JSON object per line, `{"text": ..., "label": ...}` (label optional: a
  class name or a class index);
- a folder of images: every file in it is an image, unlabelled; or one subfolder per class
  (torchvision's ImageFolder), the subfolder's name the label;
- `.npz` (or a mapping in Python) with an array named like the package's raw input
  (`text`: strings; `image`: encoded images as bytes, dtype `S`), labels under `y`.

Nothing is decoded here: each row keeps its bytes and where it came from, and the package's
own processing (`shipyard.compression.raw`) decodes it, as the server would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shipyard.compression.data import LABEL_KEYS, RawKind
from shipyard.compression.errors import CompressionConfigError
from shipyard.importers.samples import load_arrays

TEXT_SUFFIXES = (".txt", ".jsonl")
Label = str | int


@dataclass(frozen=True)
class RawRows:
    """Raw inputs one per row, where each came from, and optional labels."""

    kind: RawKind
    items: list[str | bytes]
    where: list[str]
    """`sentences.txt line 3`, `images/7/a.png`: what an error about the row names."""
    labels: list[Label] | None
    source: str


def is_raw_path(path: Path) -> bool:
    """A text file or a folder: raw data whatever the package (tensors come as .npz)."""
    return path.is_dir() or path.suffix.lower() in TEXT_SUFFIXES


def read_text_file(path: Path, *, what: str) -> RawRows:
    """Texts of a .txt (one per line) or .jsonl (`text`, optional `label`) file."""
    lines = _lines(path, what=what)
    jsonl = path.suffix.lower() == ".jsonl"
    items: list[str | bytes] = []
    where: list[str] = []
    labels: list[Label] = []
    for number, line in lines:
        if not line.strip():
            continue
        row = f"{path} line {number}"
        if not jsonl:
            items.append(line)  # bytes: the package's processing decodes them as UTF-8
            where.append(row)
            continue
        text, label = _json_row(line, row)
        items.append(text)
        where.append(row)
        if label is not None:
            labels.append(label)
        elif labels:
            raise CompressionConfigError(f"{row} has no label; label every row or none")
        if labels and len(labels) != len(items):
            raise CompressionConfigError(f"{row} has a label; label every row or none")
    if not items:
        raise CompressionConfigError(f"{path}: the {what} data holds no text")
    return RawRows("text", items, where, labels or None, source=str(path))


def read_image_folder(path: Path, *, what: str, max_bytes: int) -> RawRows:
    """Images of a folder: its files (unlabelled), or one subfolder per class; a file over
    `max_bytes` (the package's image limit) is refused before it is read."""
    entries = _visible(path)
    folders = [e for e in entries if e.is_dir()]
    files = [e for e in entries if not e.is_dir()]
    if folders and files:
        raise CompressionConfigError(
            f"{path}: holds both files ({files[0].name}) and class folders ({folders[0].name}); "
            "put every image in a class folder (labelled) or none (unlabelled)"
        )
    pairs: list[tuple[Path, Label | None]] = [(f, None) for f in files]
    for folder in folders:
        inner = _visible(folder)
        nested = next((e for e in inner if e.is_dir()), None)
        if nested is not None:
            raise CompressionConfigError(
                f"{nested}: class folders hold image files only, not folders"
            )
        pairs += [(f, folder.name) for f in inner]
    if not pairs:
        raise CompressionConfigError(f"{path}: the {what} folder holds no image")
    items: list[str | bytes] = []
    for file, _label in pairs:
        try:
            size = file.stat().st_size
            if size > max_bytes:
                raise CompressionConfigError(
                    f"{file}: {size} bytes; this package takes images of at most {max_bytes}"
                )
            items.append(file.read_bytes())
        except OSError as exc:
            raise CompressionConfigError(f"{file}: cannot be read ({exc.strerror})") from None
    labels = [label for _file, label in pairs if label is not None]
    return RawRows("images", items, [str(f) for f, _ in pairs], labels or None, source=f"{path}/")


def read_raw_arrays(
    data: Path | Mapping[str, np.ndarray], *, raw_input: str, kind: RawKind, what: str
) -> RawRows | None:
    """Raw rows from an .npz file or a mapping holding the array `raw_input`; None when
    it holds no such array (graph tensors, read as such)."""
    source = str(data) if isinstance(data, Path) else what
    if isinstance(data, Path):
        if data.suffix.lower() != ".npz":
            return None
        loaded = load_arrays(data, what=f"{what} data", error=CompressionConfigError)
        arrays = {} if isinstance(loaded, np.ndarray) else loaded
    else:
        arrays = {str(k): np.asarray(v) for k, v in data.items()}
    if raw_input not in arrays:
        return None
    array = arrays.pop(raw_input)
    if array.ndim != 1 or not array.size:
        raise CompressionConfigError(
            f"{source}: array {raw_input!r} has shape {list(array.shape)}; it holds one "
            f"{'text' if kind == 'text' else 'encoded image'} per row, shape [N]"
        )
    if kind == "images" and array.dtype.kind != "S":
        raise CompressionConfigError(
            f"{source}: array {raw_input!r} has dtype {array.dtype}; store the encoded images "
            "(PNG, JPEG …) as bytes: np.array([png, ...], dtype=bytes)"
        )
    if kind == "text" and array.dtype.kind not in "US":
        raise CompressionConfigError(
            f"{source}: array {raw_input!r} has dtype {array.dtype}; store the texts as "
            "strings: np.array([text, ...], dtype=str)"
        )
    items: list[str | bytes] = list(array.tolist())
    extra = sorted(set(arrays) - set(LABEL_KEYS))
    if extra:
        raise CompressionConfigError(
            f"{source}: holds {raw_input!r} and {extra}; raw {what} data is {raw_input!r} "
            "alone (labels under y)"
        )
    key = next((k for k in LABEL_KEYS if k in arrays), None)
    labels: list[Label] | None = None
    if key is not None:
        values = arrays[key]
        if values.shape != (len(items),):
            raise CompressionConfigError(
                f"{source}: {key} has shape {list(values.shape)} for {len(items)} rows"
            )
        labels = [v if isinstance(v, int) else str(v) for v in values.tolist()]
    where = [f"{source} {raw_input}[{index}]" for index in range(len(items))]
    return RawRows(kind, items, where, labels, source=source)


def _lines(path: Path, *, what: str) -> list[tuple[int, bytes]]:
    if not path.is_file():
        raise CompressionConfigError(f"{path}: {what} file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CompressionConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 byte order mark, as Windows editors write
    return [(n, line.rstrip(b"\r")) for n, line in enumerate(data.split(b"\n"), start=1)]


def _json_row(line: bytes, row: str) -> tuple[str, Label | None]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CompressionConfigError(f"{row} is not UTF-8 text (byte {exc.start})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CompressionConfigError(f"{row} is not JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise CompressionConfigError(f'{row}: each line is an object with a "text" string')
    label = record.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, str | int)):
        raise CompressionConfigError(f"{row}: label {label!r} is neither a class name nor an index")
    return record["text"], label


def _visible(folder: Path) -> list[Path]:
    """A folder's entries, sorted, without hidden ones (.DS_Store, .ipynb_checkpoints)."""
    try:
        return sorted(e for e in folder.iterdir() if not e.name.startswith("."))
    except OSError as exc:
        raise CompressionConfigError(f"{folder}: cannot be listed ({exc.strerror})") from None
