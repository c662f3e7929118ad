"""Opcodes that only build data (numbers, text, containers, memo): no imports, no calls."""

from __future__ import annotations

import codecs
import re
import struct
import sys
import warnings

from shipyard.safepickle.stream import ParseError, Unframer
from shipyard.safepickle.values import Blob, DictV, SetV

_KEEP_TEXT = 4096  # longer str/bytes payloads are not kept (never a module or class name)
_INT_TEXT = re.compile(rb"-?[0-9]+\n")
_INDEX_TEXT = re.compile(rb"[0-9]+\n")


class DataOps:
    """The data half of the static unpickler; Walker adds globals, calls and BUILD."""

    stack: list[object]
    metastack: list[list[object]]
    memo: dict[int, object]
    frames: Unframer
    pos: int
    op: str

    def push(self, value: object) -> None:
        self.stack.append(value)

    def pop(self) -> object:
        return self.stack.pop()

    def pop_mark(self) -> list[object]:
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def read_uint(self, size: int) -> int:
        return int.from_bytes(self.frames.read(size), "little")

    def read_payload(self, size: int) -> bytes | Blob:
        if size > sys.maxsize:
            raise ParseError(self.pos, f"{self.op} length {size} exceeds the maximum size")
        if size > _KEEP_TEXT:
            self.frames.skip(size, self.op)
            return Blob(size)
        return self.frames.read(size)

    def read_text_int(self, pattern: re.Pattern[bytes]) -> int:
        line = self.frames.readline()
        if not pattern.fullmatch(line):
            raise ParseError(self.pos, f"{self.op}: non-canonical integer {line[:20]!r}")
        return int(line)

    # -- literals ---------------------------------------------------------------------------
    def op_NONE(self) -> None:
        self.push(None)

    def op_NEWTRUE(self) -> None:
        self.push(True)

    def op_NEWFALSE(self) -> None:
        self.push(False)

    def op_INT(self) -> None:
        line = self.frames.readline()
        if line in (b"00\n", b"01\n"):
            self.push(line == b"01\n")
        elif _INT_TEXT.fullmatch(line):
            self.push(int(line))
        else:
            raise ParseError(self.pos, f"INT: non-canonical integer {line[:20]!r}")

    def op_LONG(self) -> None:
        line = self.frames.readline()
        if line.endswith(b"L\n"):
            line = line[:-2] + b"\n"
        if not _INT_TEXT.fullmatch(line):
            raise ParseError(self.pos, f"LONG: non-canonical integer {line[:20]!r}")
        self.push(int(line))

    def op_BININT(self) -> None:
        self.push(int.from_bytes(self.frames.read(4), "little", signed=True))

    def op_BININT1(self) -> None:
        self.push(self.read_uint(1))

    def op_BININT2(self) -> None:
        self.push(self.read_uint(2))

    def op_LONG1(self) -> None:
        self.push(int.from_bytes(self.frames.read(self.read_uint(1)), "little", signed=True))

    def op_LONG4(self) -> None:
        size = int.from_bytes(self.frames.read(4), "little", signed=True)
        if size < 0:
            raise ParseError(self.pos, "LONG pickle has negative byte count")
        data = self.read_payload(size)
        self.push(int.from_bytes(data, "little", signed=True) if isinstance(data, bytes) else data)

    def op_FLOAT(self) -> None:
        self.push(float(self.frames.readline()[:-1]))

    def op_BINFLOAT(self) -> None:
        self.push(struct.unpack(">d", self.frames.read(8))[0])

    def _binstring(self, size: int) -> None:
        if size < 0:
            raise ParseError(self.pos, f"{self.op} has a negative byte count")
        data = self.read_payload(size)
        self.push(data.decode("ascii") if isinstance(data, bytes) else data)

    def op_STRING(self) -> None:
        data = self.frames.readline()[:-1]
        if len(data) < 2 or data[0] != data[-1] or data[0] not in b"\"'":
            raise ParseError(self.pos, "the STRING opcode argument must be quoted")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decoded = codecs.escape_decode(data[1:-1])[0]
        self.push(decoded.decode("ascii"))

    def op_BINSTRING(self) -> None:
        self._binstring(int.from_bytes(self.frames.read(4), "little", signed=True))

    def op_SHORT_BINSTRING(self) -> None:
        self._binstring(self.read_uint(1))

    def op_BINBYTES(self) -> None:
        self.push(self.read_payload(self.read_uint(4)))

    def op_SHORT_BINBYTES(self) -> None:
        self.push(self.read_payload(self.read_uint(1)))

    def op_BINBYTES8(self) -> None:
        self.push(self.read_payload(self.read_uint(8)))

    def op_BYTEARRAY8(self) -> None:
        data = self.read_payload(self.read_uint(8))
        self.push(bytearray(data) if isinstance(data, bytes) else data)

    def op_NEXT_BUFFER(self) -> None:
        raise ParseError(self.pos, "out-of-band buffer referenced but none can be supplied")

    def op_READONLY_BUFFER(self) -> None:
        self.stack[-1]

    def _unicode(self, size: int) -> None:
        data = self.read_payload(size)
        self.push(str(data, "utf-8", "surrogatepass") if isinstance(data, bytes) else data)

    def op_UNICODE(self) -> None:
        self.push(str(self.frames.readline()[:-1], "raw-unicode-escape"))

    def op_SHORT_BINUNICODE(self) -> None:
        self._unicode(self.read_uint(1))

    def op_BINUNICODE(self) -> None:
        self._unicode(self.read_uint(4))

    def op_BINUNICODE8(self) -> None:
        self._unicode(self.read_uint(8))

    # -- containers ---------------------------------------------------------------------------
    def op_EMPTY_TUPLE(self) -> None:
        self.push(())

    def op_TUPLE(self) -> None:
        self.push(tuple(self.pop_mark()))

    def op_TUPLE1(self) -> None:
        self.stack[-1] = (self.stack[-1],)

    def op_TUPLE2(self) -> None:
        self.stack[-2:] = [(self.stack[-2], self.stack[-1])]

    def op_TUPLE3(self) -> None:
        self.stack[-3:] = [(self.stack[-3], self.stack[-2], self.stack[-1])]

    def op_EMPTY_LIST(self) -> None:
        self.push([])

    def op_LIST(self) -> None:
        self.push(self.pop_mark())

    def op_EMPTY_DICT(self) -> None:
        self.push(DictV())

    def op_DICT(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise ParseError(self.pos, "DICT with an odd number of items")
        self.push(DictV(list(zip(items[::2], items[1::2], strict=True))))

    def op_EMPTY_SET(self) -> None:
        self.push(SetV([], frozen=False))

    def op_FROZENSET(self) -> None:
        self.push(SetV(self.pop_mark(), frozen=True))

    def op_APPEND(self) -> None:
        value = self.pop()
        target = self.stack[-1]
        if isinstance(target, list):
            target.append(value)

    def op_APPENDS(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if isinstance(target, list):
            target.extend(items)

    def op_SETITEM(self) -> None:
        value = self.pop()
        key = self.pop()
        target = self.stack[-1]
        if isinstance(target, DictV):
            target.items.append((key, value))

    def op_SETITEMS(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if len(items) % 2:
            raise ParseError(self.pos, "SETITEMS with an odd number of items")
        if isinstance(target, DictV):
            target.items.extend(zip(items[::2], items[1::2], strict=True))

    def op_ADDITEMS(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if isinstance(target, SetV):
            target.items.extend(items)

    # -- stack and memo -----------------------------------------------------------------------
    def op_MARK(self) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def op_POP(self) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()

    def op_POP_MARK(self) -> None:
        self.pop_mark()

    def op_DUP(self) -> None:
        self.push(self.stack[-1])

    def _get(self, index: int) -> None:
        if index not in self.memo:
            raise ParseError(self.pos, f"memo value not found at index {index}")
        self.push(self.memo[index])

    def op_GET(self) -> None:
        self._get(self.read_text_int(_INDEX_TEXT))

    def op_BINGET(self) -> None:
        self._get(self.read_uint(1))

    def op_LONG_BINGET(self) -> None:
        self._get(self.read_uint(4))

    def op_PUT(self) -> None:
        self.memo[self.read_text_int(_INDEX_TEXT)] = self.stack[-1]

    def op_BINPUT(self) -> None:
        self.memo[self.read_uint(1)] = self.stack[-1]

    def op_LONG_BINPUT(self) -> None:
        self.memo[self.read_uint(4)] = self.stack[-1]

    def op_MEMOIZE(self) -> None:
        self.memo[len(self.memo)] = self.stack[-1]
