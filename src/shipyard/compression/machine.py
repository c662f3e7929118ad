"""Facts about this machine that change compression results (CPU flags, versions, providers)."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import onnx
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict

# Instruction-set extensions that decide which int8/fp16 kernels ONNX Runtime can use.
RELEVANT_FLAGS = (
    "sse4_1",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
)


class MachineFacts(BaseModel):
    """Recorded next to every measurement: the same model is faster or slower elsewhere."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: str
    cpu_flags: list[str]
    logical_cpus: int
    platform: str
    python: str
    onnx: str
    onnxruntime: str
    providers: list[str]

    @property
    def int8_note(self) -> str:
        flags = set(self.cpu_flags)
        if flags & INT8_DOT_FLAGS:
            return "CPU has int8 dot-product instructions (VNNI/AMX/dotprod): int8 runs fast"
        if "avx2" in flags:
            return "AVX2 without VNNI: int8 speed-ups are smaller than on VNNI CPUs"
        return "no AVX2: int8 kernels may be slower than float32"


INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})


@functools.lru_cache(maxsize=1)
def saturating_int8() -> bool:
    """Whether ONNX Runtime's int8 kernels on this CPU can saturate (x86 without VNNI or
    AMX: u8 x s8 pairs are summed in 16 bits by VPMADDUBSW), which 7-bit weights
    (`reduce_range`) avoid, as ONNX Runtime's quantization guide advises."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    _, flags = _cpuinfo()
    return bool(flags) and not flags & INT8_DOT_FLAGS


@functools.lru_cache(maxsize=1)
def machine_facts(providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> MachineFacts:
    cpu, flags = _cpuinfo()
    return MachineFacts(
        cpu=cpu or platform.processor() or platform.machine(),
        cpu_flags=[f for f in RELEVANT_FLAGS if f in flags],
        logical_cpus=os.cpu_count() or 1,
        platform=platform.platform(terse=True),
        python=platform.python_version(),
        onnx=onnx.__version__,
        onnxruntime=ort.__version__,
        providers=list(providers),
    )


def _cpuinfo() -> tuple[str, set[str]]:
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return "", set()
    cpu = ""
    flags: set[str] = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Hardware", "cpu model") and not cpu:
            cpu = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return cpu, flags
