"""joblib's compressed files: detect the codec by magic prefix and decompress under a size cap."""

from __future__ import annotations

import bz2
import importlib
import io
import lzma
import zlib
from typing import Any

from shipyard.safepickle.stream import Buffer

DEFAULT_MAX_DECOMPRESSED = 4 << 30  # 4 GiB
_CHUNK = 1 << 20
# joblib's own registry order and prefixes (joblib.compressor), used when joblib is importable
_FALLBACK_PREFIXES = (
    ("zlib", b"\x78"),
    ("gzip", b"\x1f\x8b"),
    ("bz2", b"BZ"),
    ("lzma", b"\x5d\x00"),
    ("xz", b"\xfd\x37\x7a\x58\x5a"),
    ("lz4", b"\x04\x22\x4d\x18"),
)
LEGACY_PREFIX = b"ZF"  # joblib < 0.10 "Z-file"


class DecompressError(Exception):
    """The compressed stream cannot be read the way joblib.load would read it."""


def _prefixes() -> tuple[tuple[str, bytes], ...]:
    try:
        importlib.import_module("joblib.numpy_pickle")  # registers the default compressors
        registry: dict[str, Any] = importlib.import_module("joblib.compressor")._COMPRESSORS
    except (ImportError, AttributeError):
        return _FALLBACK_PREFIXES
    return tuple((name, bytes(wrapper.prefix)) for name, wrapper in registry.items())


def detect_codec(data: Buffer) -> str | None:
    """The compressor joblib.load would pick for these bytes ("legacy" for Z-files), or None."""
    head = bytes(data[:16])
    if head.startswith(LEGACY_PREFIX):
        return "legacy"
    for name, prefix in _prefixes():
        if prefix and head.startswith(prefix):
            return name
    return None


def _inflate(data: Buffer, wbits: int, cap: int) -> bytes:
    """joblib's BinaryZlibFile semantics: one stream; a truncated end is tolerated."""
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    pos = 0
    while pos < len(data):
        chunk: bytes = data[pos : pos + _CHUNK]
        pos += len(chunk)
        while chunk:
            out += inflater.decompress(chunk, cap + 1 - len(out))
            if len(out) > cap:
                raise DecompressError(f"decompresses to more than {cap} bytes (limit)")
            chunk = inflater.unconsumed_tail
        if inflater.eof:
            if inflater.unused_data or pos < len(data):
                raise DecompressError(
                    "bytes follow the end of the compressed stream (joblib.load never returns)"
                )
            break
    return bytes(out)


def _read_capped(fileobj: Any, cap: int) -> bytes:
    out = bytearray()
    while True:
        chunk = fileobj.read(min(_CHUNK, cap + 1 - len(out)))
        if not chunk:
            return bytes(out)
        out += chunk
        if len(out) > cap:
            raise DecompressError(f"decompresses to more than {cap} bytes (limit)")


def decompress(data: Buffer, codec: str, *, cap: int = DEFAULT_MAX_DECOMPRESSED) -> bytes:
    """The uncompressed pickle stream joblib.load would read, at most cap bytes."""
    try:
        if codec in ("zlib", "gzip"):
            return _inflate(data, zlib.MAX_WBITS if codec == "zlib" else 31, cap)
        source = io.BytesIO(data) if isinstance(data, bytes) else io.BytesIO(data[:])
        if codec == "bz2":
            with bz2.BZ2File(source, "rb") as fh:
                return _read_capped(fh, cap)
        if codec in ("lzma", "xz"):
            with lzma.LZMAFile(source, "rb") as fh:
                return _read_capped(fh, cap)
        if codec == "lz4":
            try:
                frame: Any = importlib.import_module("lz4.frame")
            except ImportError as exc:
                message = "lz4-compressed, but the lz4 package is not installed"
                raise DecompressError(message) from exc
            with frame.LZ4FrameFile(source, "rb") as fh:
                return _read_capped(fh, cap)
    except DecompressError:
        raise
    except Exception as exc:  # OSError, EOFError, LZMAError, zlib.error ...: all mean corrupt
        raise DecompressError(f"{codec} stream is corrupt ({exc})") from exc
    raise DecompressError(f"compressor {codec!r} is not supported by the scanner")
