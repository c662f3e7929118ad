"""Tensors through shared memory: one segment per direction, and a small header per tensor.

An isolated model's batches cross a process boundary (shipyard.serving.isolation). Pickling the
arrays would copy them into a byte stream and back and run the unpickler on whatever the
other side sent; instead each side copies its numeric arrays into a shared-memory segment
the parent owns, and only `TensorHeader`s (name, dtype, shape, offset, size) travel over
the pipe. The reader maps them with `np.ndarray(buffer=...)`: the worker runs ONNX Runtime
on views of the input segment, the parent copies its outputs out (the segment is reused).

BYTES tensors (numpy object arrays of str or bytes) are encoded into the segment as
[uint32 lengths][uint8 kinds][data], kind 1 = str (UTF-8), 0 = bytes, and decoded back to
the same Python types. Any other object element is refused (TypeError).

Segments are created with their pages reserved (`posix_fallocate`): a tmpfs /dev/shm that is
too small then fails the allocation with an OSError instead of killing the process with
SIGBUS when a page is first touched.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import NamedTuple

import numpy as np

ALIGN = 64
"""Every tensor starts on a 64-byte boundary (cache lines; SIMD loads in ONNX Runtime)."""
SEGMENT_PREFIX = "shipyard-"
"""Names of Shipyard's segments in /dev/shm: shipyard-<server pid>-<random>."""
MIN_SEGMENT = 1 << 20
_SHM_DIR = "/dev/shm"


class TensorHeader(NamedTuple):
    """Where one tensor lies in a segment; the only thing sent over the pipe for it."""

    name: str
    dtype: str
    """numpy dtype string ('<f4'); '|O' for BYTES."""
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _Part:
    name: str
    array: np.ndarray
    blob: bytes | None
    """The encoded BYTES tensor; None for a numeric one (copied straight from `array`)."""

    @property
    def nbytes(self) -> int:
        return len(self.blob) if self.blob is not None else self.array.nbytes


class Packed:
    """Arrays ready to copy into a segment: BYTES encoded, offsets laid out."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.parts = [_part(name, np.asarray(a)) for name, a in arrays.items()]
        self.offsets: list[int] = []
        end = 0
        for part in self.parts:
            start = _aligned(end)
            self.offsets.append(start)
            end = start + part.nbytes
        self.size = end
        """Bytes the segment must hold."""

    def write(self, buf: memoryview) -> list[TensorHeader]:
        """Copy every tensor into `buf` (at least `size` bytes) and return their headers."""
        headers = []
        for part, offset in zip(self.parts, self.offsets, strict=True):
            if part.blob is not None:
                buf[offset : offset + len(part.blob)] = part.blob
                dtype = "|O"
            else:
                view = np.ndarray(part.array.shape, part.array.dtype, buffer=buf, offset=offset)
                view[...] = part.array
                del view  # release the export: a segment with live views cannot close
                dtype = part.array.dtype.str
            headers.append(
                TensorHeader(part.name, dtype, tuple(part.array.shape), offset, part.nbytes)
            )
        return headers


def read(buf: memoryview, headers: list[TensorHeader], *, copy: bool) -> dict[str, np.ndarray]:
    """The tensors `headers` describe; views into `buf` unless `copy` (BYTES always copy)."""
    arrays: dict[str, np.ndarray] = {}
    for h in headers:
        if h.offset < 0 or h.offset + h.nbytes > len(buf):
            raise ValueError(f"tensor {h.name!r} lies outside the shared-memory segment")
        if h.dtype == "|O":
            arrays[h.name] = _decode(bytes(buf[h.offset : h.offset + h.nbytes]), h.shape)
            continue
        view = np.ndarray(h.shape, np.dtype(h.dtype), buffer=buf, offset=h.offset)
        arrays[h.name] = view.copy() if copy else view
    return arrays


def create_segment(size: int) -> shared_memory.SharedMemory:
    """A new segment of at least `size` bytes, its pages reserved, named after this process."""
    size = max(MIN_SEGMENT, _aligned(size, 4096))
    name = f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
    segment = shared_memory.SharedMemory(name=name, create=True, size=size)
    fd = getattr(segment, "_fd", -1)  # CPython's SharedMemory keeps the shm_open fd here
    if fd >= 0 and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            free_segment(segment)
            raise OSError(
                exc.errno, f"shared memory for a model worker ({size} bytes): {exc.strerror}"
            ) from exc
    return segment


def free_segment(segment: shared_memory.SharedMemory) -> None:
    """Close and unlink a segment this process created (once; a second call does nothing)."""
    with contextlib.suppress(BufferError):  # a view is still alive; unlinking still frees it
        segment.close()
    with contextlib.suppress(FileNotFoundError):
        segment.unlink()


class Attached:
    """A segment another process created, mapped here without telling any resource tracker:
    its creator owns it and unlinks it (a tracker here would unlink it when we die)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._segment: shared_memory.SharedMemory | None = None
        path = os.path.join(_SHM_DIR, name)
        if os.path.isdir(_SHM_DIR):
            fd = os.open(path, os.O_RDWR)
            try:
                self._map: mmap.mmap | None = mmap.mmap(fd, 0)
            finally:
                os.close(fd)
            self.buf = memoryview(self._map)
        else:  # no /dev/shm (not Linux): the stdlib's way, which registers it with a tracker
            self._map = None
            self._segment = shared_memory.SharedMemory(name=name)
            buf = self._segment.buf
            assert buf is not None
            self.buf = buf

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self.buf.release()
            if self._map is not None:
                self._map.close()
            if self._segment is not None:
                self._segment.close()


def grown(size: int, needed: int) -> int:
    """The size to grow a segment of `size` to so that it holds `needed` bytes (doubling)."""
    return max(needed, 2 * size)


def _aligned(offset: int, to: int = ALIGN) -> int:
    return (offset + to - 1) // to * to


def _part(name: str, array: np.ndarray) -> _Part:
    if array.dtype != object:
        return _Part(name, array, None)  # copied into a C-order view: strides do not matter
    return _Part(name, array, _encode(array))


def _encode(array: np.ndarray) -> bytes:
    items = []
    kinds = np.empty(array.size, np.uint8)
    for i, item in enumerate(array.flat):
        if isinstance(item, str):
            items.append(item.encode("utf-8"))
            kinds[i] = 1
        elif isinstance(item, bytes):
            items.append(item)
            kinds[i] = 0
        else:
            raise TypeError(
                f"BYTES tensor holds a {type(item).__name__}; only str and bytes cross to a "
                "model worker"
            )
    lengths = np.fromiter((len(b) for b in items), np.uint32, count=len(items))
    return lengths.astype("<u4").tobytes() + kinds.tobytes() + b"".join(items)


def _decode(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    lengths = np.frombuffer(blob, "<u4", count=count)
    kinds = np.frombuffer(blob, np.uint8, count=count, offset=4 * count)
    out = np.empty(count, dtype=object)
    position = 5 * count
    for i in range(count):
        end = position + int(lengths[i])
        chunk = blob[position:end]
        out[i] = chunk.decode("utf-8") if kinds[i] else chunk
        position = end
    if position != len(blob):
        raise ValueError("BYTES tensor in shared memory does not match its header")
    return out.reshape(shape)
