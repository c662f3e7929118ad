"""`serving.py --compiled` (benchmarks/_compiled.py): the copy it serves from really is compiled,
behaves as the source does, and leaves the checkout alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._compiled import LEFT_OUT, MODULES, compiled_copy  # noqa: E402

PROBE = """
import shipyard.codecs.limits as limits
from shipyard.codecs.errors import RequestTooLarge
print(limits.__file__)
small = limits.DecodeLimits(max_tensor_elements=10)
print(limits.check_elements((2, 5), small, what="x"))
try:
    limits.check_elements((3, 5), small, what="x")
except RequestTooLarge as exc:
    print(type(exc).__name__, int(exc.status), exc.message)
"""


def test_every_listed_module_exists_and_none_left_out_for_a_reason_is_listed() -> None:
    src = ROOT / "src"
    assert all((src / module).is_file() for module in MODULES)
    assert len(set(MODULES)) == len(MODULES)
    assert all((src / module).is_file() for module in LEFT_OUT)
    assert not set(MODULES) & set(LEFT_OUT)


def _compiler() -> str | None:
    if shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0]) is None:
        return "no C compiler on PATH"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return "no Python.h (Python's headers) to compile against"
    return None


def test_a_compiled_module_is_the_extension_and_answers_as_the_source(tmp_path: Path) -> None:
    missing = _compiler()
    if missing is not None:
        pytest.skip(f"mypyc cannot build here: {missing}")
    before = sorted(p.name for p in (ROOT / "src" / "shipyard" / "codecs").iterdir())
    tree = compiled_copy(ROOT / "src", tmp_path, modules=("shipyard/codecs/limits.py",))
    assert sorted(p.name for p in (ROOT / "src" / "shipyard" / "codecs").iterdir()) == before
    env = {**os.environ, "PYTHONPATH": str(tree)}
    answers = {}
    for where, environ in (("compiled", env), ("source", {**os.environ, "PYTHONPATH": ""})):
        done = subprocess.run(
            [sys.executable, "-c", PROBE],
            env=environ,
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        )
        answers[where] = done.stdout.splitlines()
    compiled_file, *compiled = answers["compiled"]
    source_file, *source = answers["source"]
    assert compiled_file.startswith(str(tree)) and compiled_file.endswith(".so")
    assert source_file.endswith("limits.py")
    assert compiled == source
    assert compiled[0] == "10" and compiled[1].startswith("RequestTooLarge 413 x: shape [3, 5]")
