"""`--compiled`: this tree's request path compiled with mypyc, for the benchmark only.

A trial of the one lever left for issue 12's target, measured rather than assumed: perf on a
worker under load puts about two thirds of its CPU in libpython (the interpreter loop,
attribute and dict look-ups, object allocation) and a few per cent each in numpy, uvloop,
ONNX Runtime, orjson and httptools. mypyc (part of mypy, which the dev extra installs)
compiles type-annotated modules to C extensions with the same behaviour; the code is
`mypy --strict` clean, so most of the request path compiles as it is.

`compiled_copy(src, work)` copies `src/shipyard` into `work` and compiles `MODULES` there
(the `.so` files sit beside their `.py` files, which stay for everything else); the servers
then import it through `PYTHONPATH`, as `--baseline` does with another commit. Nothing in the
checkout or the installed package changes, and the package's tests import no compiled code
(tests/benchmarks/test_compiled.py builds one module in a temporary folder). The
build takes about a minute on 2 cores and needs a C compiler and Python's headers.

Measured (results/serving_compiled.md, paired against the same code interpreted): about 5 %
more requests per second with `--workers 2` and batching, nothing clear in one process or
without batching. The compiled modules still go through the interpreter for every object of
the libraries around them (uvicorn's protocol, Starlette, asyncio, numpy's Python wrappers),
so this stays a benchmark option and the package is not built with it.

Modules left out are in `LEFT_OUT`, each with the reason found when the tests ran against a
compiled copy.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

MODULES = (
    "shipyard/codecs/v2.py",
    "shipyard/codecs/tensors.py",
    "shipyard/codecs/limits.py",
    "shipyard/codecs/binary.py",
    "shipyard/codecs/jsonbody.py",
    "shipyard/serving/batching.py",
    "shipyard/serving/batch_queue.py",
    "shipyard/serving/batch_join.py",
    "shipyard/serving/version_run.py",
    "shipyard/serving/request_checks.py",
    "shipyard/serving/request_tally.py",
    "shipyard/serving/traffic.py",
    "shipyard/serving/routing.py",
    "shipyard/serving/run_timing.py",
    "shipyard/serving/http/common.py",
    "shipyard/serving/http/v2.py",
)
"""The request path's modules that compile and keep their behaviour."""

LEFT_OUT = {
    "shipyard/serving/http/dispatch.py": "compiled, an exception handled inside an audited call "
    "(`_audited`, which awaits in `finally`) came back out of the HTTP handler as a 500 "
    "(tests/serving/test_audit_serving.py::test_failed_loads_are_recorded)",
    "shipyard/serving/dataplane.py": "tests replace `DataPlane.infer` on an instance, which a "
    "compiled class refuses (attributes of native classes are read-only)",
    "shipyard/package/tensorspec.py": "pydantic models: mypyc's C does not compile (an "
    "undeclared module reference to `pydantic.main`)",
    "shipyard/runtime/base.py": "pydantic models, as tensorspec.py",
    "shipyard/serving/queue_policy.py": "pydantic models, as tensorspec.py",
    "shipyard/serving/http/cycle.py": "subclasses uvicorn's cycle, whose attributes mypyc cannot "
    "see (an internal error)",
    "shipyard/serving/http/guard.py": "subclasses uvicorn's protocol, as cycle.py",
}
"""Request-path modules not compiled, and why."""

SKIPPED_IMPORTS = [
    "ray",
    "torch",
    "matplotlib",
    "keras",
    "onnx_ir",
    "onnxscript",
    "sklearn",
    "transformers",
    "sentence_transformers",
    "pandas",
    "scipy",
    "boto3",
    "botocore",
    "s3fs",
    "fsspec",
    "moto",
    "onnx",
    "onnxruntime",
    "skl2onnx",
    "onnxmltools",
    "xgboost",
    "lightgbm",
    "catboost",
    "sympy",
    "PIL",
    "tokenizers",
    "huggingface_hub",
    "safetensors",
    "sigstore",
    "model_signing",
    "cryptography",
    "grpc",
    "google",
    "jsonschema",
    "kubernetes_validate",
    "aiobotocore",
    "pyarrow",
    "plotly",
]
"""Libraries whose modules mypyc takes as `Any` instead of analysing them: following every
import (ray, torch, matplotlib ...) made the analysis run for more than 15 minutes here; the
compiled modules call into them as Python code does either way."""

MYPY_CONFIG = f"""[mypy]
python_version = {sys.version_info.major}.{sys.version_info.minor}
ignore_missing_imports = True
[mypy-{",".join(f"{name}.*" for name in SKIPPED_IMPORTS)}]
follow_imports = skip
"""


def compiled_copy(src: Path, work: Path, *, modules: Sequence[str] = MODULES) -> Path:
    """A copy of `src/shipyard` under `work` with `modules` compiled; the folder to put on
    `PYTHONPATH`. Raises SystemExit with mypyc's last lines when the build fails."""
    tree = work / "compiled-src"
    if tree.exists():
        shutil.rmtree(tree)
    shutil.copytree(src / "shipyard", tree / "shipyard", ignore=_ignored)
    (tree / "mypyc.ini").write_text(MYPY_CONFIG, encoding="utf-8")
    log = work / "mypyc.log"
    with log.open("w", encoding="utf-8") as out:
        done = subprocess.run(
            [sys.executable, "-m", "mypyc", "--config-file", "mypyc.ini", *modules],
            cwd=tree,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    built = [m for m in modules if _extension(tree, m) is not None]
    if done.returncode != 0 or len(built) != len(modules):
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        missing = sorted(set(modules) - set(built))
        raise SystemExit(
            f"--compiled: mypyc failed (exit {done.returncode}; not built: {missing}): "
            + " | ".join(lines[-3:])
        )
    shutil.rmtree(tree / "build", ignore_errors=True)
    return tree


def _extension(tree: Path, module: str) -> Path | None:
    path = tree / module
    found = sorted(path.parent.glob(f"{path.stem}.cpython-*.so"))
    return found[0] if found else None


def _ignored(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith(".so")}
