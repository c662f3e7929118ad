"""A static pickle machine: follows every opcode, stack and memo, resolves globals, runs nothing."""

from __future__ import annotations

import pickle
import pickletools
import struct
import sys
from collections.abc import Callable

from shipyard.safepickle.allowlist import NOT_CALLABLE, compat_name
from shipyard.safepickle.joblib_arrays import read_array
from shipyard.safepickle.numpy_objects import numpy_build_problem
from shipyard.safepickle.ops import DataOps
from shipyard.safepickle.report import Finding
from shipyard.safepickle.stream import ParseError, RawFile, Unframer
from shipyard.safepickle.values import (
    DictV,
    Global,
    Obj,
    Unknown,
    result_class,
    truthy,
)

Refusal = Callable[[str, str], "str | None"]

OPNAMES: dict[int, str] = {ord(op.code): op.name for op in pickletools.opcodes}
_WRAPPER_PARAMS = ("subclass", "shape", "order", "dtype", "allow_mmap")
MAX_FINDINGS = 1000
_ANALYSIS_BUDGET = 5_000_000  # stand-in nodes inspected for joblib wrappers, per pickle


class _Stop(Exception):
    def __init__(self, value: object) -> None:
        self.value = value


class Walker(DataOps):
    """Walks one pickle the way pickle._Unpickler (or joblib's NumpyUnpickler) would load it."""

    def __init__(
        self,
        file: RawFile,
        *,
        refusal: Refusal,
        findings: list[Finding],
        globals_seen: set[str],
        member: str | None = None,
        joblib: bool = False,
        torch: bool = False,
    ) -> None:
        self.file = file
        self.frames = Unframer(file)
        self.refusal = refusal
        self.findings = findings
        self.globals_seen = globals_seen
        self.member = member
        self.joblib = joblib
        self.torch = torch
        self.stack: list[object] = []
        self.metastack: list[list[object]] = []
        self.memo: dict[int, object] = {}
        self.proto = 0
        self.op = "?"
        self.pos = file.pos
        self.budget = _ANALYSIS_BUDGET
        self.nested = 0  # object-array pickles found inside a joblib stream
        self.wrappers = 0

    # -- plumbing ---------------------------------------------------------------------------
    def run(self) -> object:
        """Walk to STOP and return the statically known top-level value."""
        handlers = {code: getattr(self, f"op_{name}") for code, name in OPNAMES.items()}
        frames = self.frames
        while True:
            self.pos = frames.position
            key = frames.read(1) if frames.frame_left or self.file.remaining else b""
            if not key:
                raise ParseError(self.pos, "pickle data truncated: no STOP opcode")
            code = key[0]
            self.op = OPNAMES.get(code, f"0x{code:02x}")
            handler = handlers.get(code)
            if handler is None:
                raise ParseError(self.pos, f"invalid pickle opcode byte 0x{code:02x}")
            try:
                handler()
            except _Stop as stop:
                return stop.value
            except ParseError:
                raise
            except (IndexError, KeyError) as exc:
                message = f"{self.op} on a malformed stack or memo ({exc!r})"
                raise ParseError(self.pos, message) from exc
            except (ValueError, UnicodeDecodeError, struct.error, OverflowError) as exc:
                raise ParseError(self.pos, f"{self.op}: {exc}") from exc

    def fail(self, reason: str, global_name: str | None = None) -> None:
        """Record a finding at the current opcode and keep walking."""
        if len(self.findings) >= MAX_FINDINGS:
            raise ParseError(self.pos, f"more than {MAX_FINDINGS} findings: scan stopped")
        self.findings.append(Finding(self.pos, self.op, global_name, reason, self.member))

    def resolve(self, module: str, name: str) -> Global:
        """find_class as the loader runs it: Python 2 renames for protocols below 3."""
        if self.proto < 3:
            module, name = compat_name(module, name)
        glob = Global(module, name)
        self.globals_seen.add(glob.full)
        reason = self.refusal(module, name)
        if reason is not None:
            self.fail(reason, glob.full)
        return glob

    def nested_walk(self) -> object:
        """joblib's object-array payload: a fresh plain unpickler reading the same file."""
        inner = Walker(
            self.file,
            refusal=self.refusal,
            findings=self.findings,
            globals_seen=self.globals_seen,
            member=self.member,
            torch=self.torch,
        )
        value = inner.run()
        if inner.frames.frame_left:
            raise ParseError(inner.pos, "object-array pickle stops before the end of its frame")
        self.nested += 1
        return value

    # -- protocol, framing, persistent ids ---------------------------------------------------
    def op_PROTO(self) -> None:
        proto = self.frames.read(1)[0]
        if proto > pickle.HIGHEST_PROTOCOL:
            raise ParseError(self.pos, f"unsupported pickle protocol: {proto}")
        self.proto = proto

    def op_FRAME(self) -> None:
        size = self.read_uint(8)
        if size > sys.maxsize:
            raise ParseError(self.pos, "frame size exceeds the maximum size")
        self.frames.load_frame(size)

    def op_STOP(self) -> None:
        raise _Stop(self.pop())

    def _persistent(self) -> None:
        if not self.torch:
            self.fail("persistent id outside a torch checkpoint: the loader cannot resolve it")
        self.push(Unknown())

    def op_PERSID(self) -> None:
        self.frames.readline()[:-1].decode("ascii")
        self._persistent()

    def op_BINPERSID(self) -> None:
        self.pop()
        self._persistent()

    # -- globals and calls --------------------------------------------------------------------
    def op_GLOBAL(self) -> None:
        module = self.frames.readline()[:-1].decode("utf-8")
        name = self.frames.readline()[:-1].decode("utf-8")
        self.push(self.resolve(module, name))

    def op_STACK_GLOBAL(self) -> None:
        name = self.pop()
        module = self.pop()
        if type(module) is not str or type(name) is not str:
            self.fail("STACK_GLOBAL operands are not strings known before loading")
            self.push(Unknown())
            return
        self.push(self.resolve(module, name))

    def _extension(self, code: int) -> None:
        self.fail(f"copyreg extension code {code} names a global the scan cannot see")
        self.push(Unknown())

    def op_EXT1(self) -> None:
        self._extension(self.read_uint(1))

    def op_EXT2(self) -> None:
        self._extension(self.read_uint(2))

    def op_EXT4(self) -> None:
        self._extension(int.from_bytes(self.frames.read(4), "little", signed=True))

    def _call(self, func: object, args: object, *, init: bool) -> object:
        """The stand-in for func(*args) (init) or func.__new__(func, *args) (not init)."""
        if not isinstance(func, Global):
            self.fail(f"{self.op} calls a value that is not an imported global")
            return Unknown()
        if func.full in NOT_CALLABLE:
            self.fail(NOT_CALLABLE[func.full], func.full)
        cls: Global | None = func
        if self.joblib:
            cls, visited = result_class(func, args, self.budget)
            self.budget -= visited
            if self.budget <= 0:
                raise ParseError(self.pos, "pickle too complex to analyse statically")
        obj = Obj(cls, func, args)
        if func.is_joblib_wrapper and init:
            self._wrapper_init(obj, args)
        return obj

    def _wrapper_init(self, obj: Obj, args: object) -> None:
        if not isinstance(args, tuple) or not 4 <= len(args) <= 6:
            obj.cls = None  # the loader fails; nothing sensible to model
            return
        obj.attrs.update(zip(_WRAPPER_PARAMS, args, strict=False))
        obj.attrs.setdefault("allow_mmap", False)
        obj.attrs["numpy_array_alignment_bytes"] = args[5] if len(args) == 6 else 16

    def op_REDUCE(self) -> None:
        args = self.pop()
        self.stack[-1] = self._call(self.stack[-1], args, init=True)

    def op_NEWOBJ(self) -> None:
        args = self.pop()
        cls = self.pop()
        self.push(self._call(cls, args, init=False))

    def op_NEWOBJ_EX(self) -> None:
        kwargs = self.pop()
        args = self.pop()
        cls = self.pop()
        # keyword arguments make the call opaque (numpy never pickles a dtype this way)
        self.push(self._call(cls, (args, kwargs) if truthy(kwargs) else args, init=False))

    def op_OBJ(self) -> None:
        args = self.pop_mark()
        cls = args.pop(0)
        self.push(self._call(cls, tuple(args), init=bool(args)))

    def op_INST(self) -> None:
        module = self.frames.readline()[:-1].decode("ascii")
        name = self.frames.readline()[:-1].decode("ascii")
        cls = self.resolve(module, name)
        args = self.pop_mark()
        self.push(self._call(cls, tuple(args), init=bool(args)))

    def op_BUILD(self) -> None:
        state = self.pop()
        target = self.stack[-1]
        if isinstance(target, Obj):
            target.states.append(state)
            if target.is_wrapper:
                self._wrapper_state(target, state)
            else:
                problem = numpy_build_problem(target, state)
                if problem is not None:
                    self.fail(problem)
        if not self.joblib:
            return
        if isinstance(target, Obj) and target.is_wrapper:
            self.wrappers += 1
            self.stack[-1] = read_array(self, target)
        elif isinstance(target, Unknown) or (isinstance(target, Obj) and target.cls is None):
            raise ParseError(self.pos, "cannot tell whether BUILD targets a joblib array wrapper")

    def _wrapper_state(self, obj: Obj, state: object) -> None:
        """load_build without __setstate__: dict state, then slot state via setattr."""
        slotstate: object = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slotstate = state
        for part in (state, slotstate):
            if not truthy(part):
                continue
            if not isinstance(part, DictV):
                raise ParseError(self.pos, "joblib array wrapper state is not a plain dict")
            obj.attrs.update((k, v) for k, v in part.items if type(k) is str)
