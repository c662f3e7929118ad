"""File formats that carry pickles: plain and joblib streams, compressed joblib, torch zips."""

from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from shipyard.safepickle.compression import DecompressError, decompress, detect_codec
from shipyard.safepickle.report import Finding
from shipyard.safepickle.stream import Buffer, BufferFile, ParseError, RawFile
from shipyard.safepickle.vm import Refusal, Walker

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_MAX_ZIP_DEPTH = 3
_PICKLE_SUFFIXES = (".pkl", ".pickle")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".joblib", ".pt2")
LEGACY_TORCH = (
    "legacy torch serialization (several pickles followed by raw storage bytes) is not "
    "scanned: re-save with torch.save(obj, path, _use_new_zipfile_serialization=True)"
)


@dataclass
class ScanState:
    """What a scan accumulates across the pickles of one file."""

    refusal: Refusal
    torch_refusal: Refusal
    max_decompressed: int
    findings: list[Finding] = field(default_factory=list)
    globals_seen: set[str] = field(default_factory=set)
    pickles: int = 0

    def add(self, position: int, opcode: str, reason: str, member: str | None) -> None:
        """Record a finding that is not about one global."""
        self.findings.append(Finding(position, opcode, None, reason, member))


def scan_buffer(
    data: Buffer, state: ScanState, *, member: str | None = None, depth: int = 0
) -> str:
    """Scan one file (or zip member) by what its first bytes say it is; return its format."""
    if bytes(data[:4]) in ZIP_MAGICS:
        return scan_zip(data, state, member=member, depth=depth)
    codec = detect_codec(data)
    if codec == "legacy":
        state.add(0, "-", "joblib < 0.10 'Z-file' format: re-save it with a current joblib", member)
        return "joblib-legacy"
    if codec is None:
        return scan_pickles(data, state, member=member, joblib=True)
    try:
        plain = decompress(data, codec, cap=state.max_decompressed)
    except DecompressError as exc:
        state.add(0, "-", f"{codec}-compressed joblib file: {exc}", member)
        return f"joblib-compressed:{codec}"
    scan_pickles(plain, state, member=member, joblib=True)
    return f"joblib-compressed:{codec}"


def scan_pickles(
    data: Buffer, state: ScanState, *, member: str | None, joblib: bool, torch: bool = False
) -> str:
    """Every pickle in a row; bytes after the last STOP must themselves be complete pickles."""
    if not len(data):
        state.add(0, "-", "empty file: not a pickle", member)
        return "pickle"
    file = RawFile(data)
    fmt = "pickle"
    count = 0
    while file.remaining:
        start = file.pos
        walker = Walker(
            file,
            refusal=state.torch_refusal if torch else state.refusal,
            findings=state.findings,
            globals_seen=state.globals_seen,
            member=member,
            joblib=joblib,
            torch=torch,
        )
        try:
            value = walker.run()
        except ParseError as exc:
            reason = exc.message
            if count:
                reason = f"bytes after pickle #{count} are not a complete pickle: {reason}"
            state.add(exc.position, walker.op, reason, member)
            break
        except (RecursionError, MemoryError, TypeError, AttributeError) as exc:
            # the static model itself gave up: refuse rather than pass the file as clean
            state.add(walker.pos, walker.op, f"cannot be analysed statically ({exc!r})", member)
            break
        count += 1
        state.pickles += 1 + walker.nested
        if walker.wrappers:
            fmt = "joblib"
        if count == 1 and type(value) is int and value == TORCH_LEGACY_MAGIC:
            state.add(start, "STOP", LEGACY_TORCH, member)
            return "torch-legacy"
        if walker.frames.frame_left:
            state.add(walker.pos, "STOP", "STOP before the end of its frame", member)
            break
    return fmt


def _zip_format(names: list[str], archive: zipfile.ZipFile) -> str:
    if any(name.endswith("/code/") or "/code/__torch__/" in name for name in names):
        return "torchscript"
    for name in names:
        base = PurePosixPath(name).name
        if base == "serialized_exported_program.json":
            return "torch-export"
        small = base == "archive_format" and archive.getinfo(name).file_size < 64
        if small and archive.read(name).strip() == b"pt2":
            return "torch-export"
    if any(PurePosixPath(name).name == "data.pkl" for name in names):
        return "torch-zip"
    return "zip"


def scan_zip(data: Buffer, state: ScanState, *, member: str | None, depth: int) -> str:
    """A zip archive: every pickle member is scanned, nested archives recursively."""
    prefix = f"{member}!" if member else ""
    if depth >= _MAX_ZIP_DEPTH:
        state.add(0, "-", "zip archives nested too deeply", member)
        return "zip"
    try:
        archive = zipfile.ZipFile(BufferFile(data))
        infos = archive.infolist()
        names = [info.filename for info in infos]
        fmt = _zip_format(names, archive)
    except Exception as exc:  # zipfile raises many kinds on hostile archives; all mean "refuse"
        state.add(0, "-", f"not a readable zip archive ({exc})", member)
        return "zip"
    duplicates = sorted(name for name, seen in Counter(names).items() if seen > 1)
    if duplicates:
        state.add(0, "-", f"zip has duplicate members {duplicates[:5]}: ambiguous", member)
    budget = state.max_decompressed
    pickled = 0
    for info in infos:
        if info.is_dir():
            continue
        name = f"{prefix}{info.filename}"
        try:
            with archive.open(info) as fh:
                head = fh.read(8)
            is_pickle = info.filename.endswith(_PICKLE_SUFFIXES)
            is_checkpoint = info.filename.endswith(".joblib") or (
                info.filename.endswith(_CHECKPOINT_SUFFIXES) and head[:1] == b"\x80"
            )
            if not (is_pickle or is_checkpoint or head[:4] in ZIP_MAGICS):
                continue  # raw tensor or metadata bytes: data, never unpickled
            with archive.open(info) as fh:
                content = fh.read(budget + 1)
        except Exception as exc:  # encrypted, unknown method, bad CRC, truncated ...
            state.add(info.header_offset, "-", f"unreadable zip member ({exc})", name)
            continue
        if len(content) > budget:
            state.add(info.header_offset, "-", "zip members decompress past the size limit", name)
            break
        budget -= len(content)
        if head[:4] in ZIP_MAGICS:
            scan_zip(content, state, member=name, depth=depth + 1)
            continue
        pickled += 1
        if is_pickle:
            torch = fmt.startswith("torch")
            scan_pickles(content, state, member=name, joblib=False, torch=torch)
        else:
            scan_buffer(content, state, member=name, depth=depth + 1)
    if fmt == "zip" and pickled:
        state.add(0, "-", f"zip of unknown layout holds {pickled} pickled member(s)", member)
    return fmt
