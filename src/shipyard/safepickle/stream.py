"""Byte sources that read a pickle exactly as pickle._Unpickler does, frames included."""

from __future__ import annotations

import io
import mmap

Buffer = bytes | mmap.mmap


class ParseError(Exception):
    """The bytes are not something the loader could unpickle; carries the byte position."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(message)
        self.position = position
        self.message = message


class RawFile:
    """The file itself: shared by the unframer, nested pickles and joblib array reads."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: Buffer, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data)

    @property
    def remaining(self) -> int:
        """Bytes left after the current position."""
        return self.end - self.pos

    def take(self, n: int, what: str = "pickle data") -> bytes:
        """Exactly n bytes, or a ParseError (the loader fails on short reads)."""
        if n > self.remaining:
            raise ParseError(self.pos, f"{what} truncated: needs {n} bytes, {self.remaining} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def skip(self, n: int, what: str) -> None:
        """Advance over n bytes without copying them."""
        if n > self.remaining:
            raise ParseError(self.pos, f"{what} truncated: needs {n} bytes, {self.remaining} left")
        self.pos += n

    def readline(self) -> bytes:
        """One line including its newline; a missing newline means truncated data."""
        idx = self.data.find(b"\n", self.pos, self.end)
        if idx < 0:
            raise ParseError(self.pos, "pickle data truncated inside a text argument")
        out = self.data[self.pos : idx + 1]
        self.pos = idx + 1
        return out


class Unframer:
    """pickle._Unframer over a RawFile: reads come from the current frame, else the file."""

    __slots__ = ("file", "frame_end", "frame_pos")

    def __init__(self, file: RawFile) -> None:
        self.file = file
        self.frame_pos = -1  # -1: no current frame
        self.frame_end = -1

    @property
    def position(self) -> int:
        """File offset of the next byte the unpickler will read."""
        return self.frame_pos if self.frame_pos >= 0 else self.file.pos

    @property
    def frame_left(self) -> int:
        """Unread bytes of the current frame (0 when there is none)."""
        return self.frame_end - self.frame_pos if self.frame_pos >= 0 else 0

    def _in_frame(self, n: int) -> bool:
        if self.frame_pos < 0:
            return False
        if self.frame_pos == self.frame_end and n:
            self.frame_pos = self.frame_end = -1  # frame used up: back to the file
            return False
        if self.frame_end - self.frame_pos < n:
            raise ParseError(self.frame_pos, "pickle exhausted before end of frame")
        return True

    def read(self, n: int) -> bytes:
        """n bytes the way the unpickler reads an opcode or its argument."""
        if not self._in_frame(n):
            return self.file.take(n)
        out = self.file.data[self.frame_pos : self.frame_pos + n]
        self.frame_pos += n
        return out

    def skip(self, n: int, what: str) -> None:
        """Like read, for large payloads the scan does not need."""
        if not self._in_frame(n):
            self.file.skip(n, what)
            return
        self.frame_pos += n

    def readline(self) -> bytes:
        """A newline-terminated text argument."""
        if not self._in_frame(1):
            return self.file.readline()
        idx = self.file.data.find(b"\n", self.frame_pos, self.frame_end)
        if idx < 0:
            raise ParseError(self.frame_pos, "pickle exhausted before end of frame")
        out = self.file.data[self.frame_pos : idx + 1]
        self.frame_pos = idx + 1
        return out

    def load_frame(self, size: int) -> None:
        """FRAME: the next size bytes of the file become the current frame."""
        if self.frame_pos >= 0 and self.frame_pos != self.frame_end:
            raise ParseError(self.frame_pos, "beginning of a new frame before end of current")
        size = min(size, self.file.remaining)  # a short frame fails later, as in pickle.py
        self.frame_pos = self.file.pos
        self.frame_end = self.file.pos + size
        self.file.pos += size


class BufferFile(io.RawIOBase):
    """A seekable read-only file over bytes or an mmap, without copying (for zipfile)."""

    def __init__(self, data: Buffer) -> None:
        super().__init__()
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._data)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._data[self._pos : self._pos + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)
