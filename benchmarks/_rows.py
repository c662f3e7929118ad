"""The serving benchmark's data: one measured cell, one row (server · request · config)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from benchmarks._baseline import Baseline

RAW, SHIPYARD, MLSERVER, TRITON = "ONNX Runtime", "Shipyard", "MLServer", "Triton"
JSON_, BINARY = "JSON", "binary"
TEXT_JSON, TEXT_BINARY = "JSON text", "binary text"
"""Text in: the BYTES input `text`, tokenized by the server (JSON or binary tensors)."""
ENCODE = "SentenceTransformer"
TOKEN_OF_TEXT = {TEXT_JSON: JSON_, TEXT_BINARY: BINARY}


@dataclass
class Cell:
    """One measurement: a row at one concurrency."""

    rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    requests: int
    first_error: str = ""
    batch_size: int = 1
    """Rows per session.run (raw rows measured at several batch sizes keep the best)."""
    rounds: list[float] = field(default_factory=list)
    """req/s of every round of this cell (the cell itself is the best one)."""
    server_cpu_us: float | None = None
    """CPU time (user + system) of the server's process and its descendants per answered
    request in the measured window, µs; None where not measured (raw, Ray rows)."""
    client_cpu_us: float | None = None
    """The load generator's own CPU time per answered request, µs."""


@dataclass
class Row:
    model: str
    server: str
    encoding: str
    config: str
    batching: bool | None
    cells: dict[int, Cell] = field(default_factory=dict)
    note: str = ""
    paired: dict[int, list[float]] = field(default_factory=dict)
    """--paired: req/s ÷ the baseline twin's, measured at the same time, each round."""

    @property
    def label(self) -> str:
        if self.server == RAW:
            return f"{self.server} in-process ({self.config})"
        if self.server == ENCODE:
            return f"{self.server}.encode in-process ({self.config})"
        return f"{self.server} · {self.encoding} · {self.config}"


@dataclass(frozen=True)
class Bodies:
    """The same batch-1 request for every server, JSON and with binary tensors."""

    files: dict[str, Path]
    header_lengths: dict[str, int | None]
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    npz: Path
    text: str | None = None
    """The sentence the text-in rows send (tokenizes to the token-id rows' ids), if any."""


@dataclass
class Run:
    args: argparse.Namespace
    work: Path
    rows: list[Row] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    setup_failures: dict[str, str] = field(default_factory=dict)
    baseline: Baseline | None = None
    """`--baseline REF` checked out: its server runs beside this tree's."""
    shipyard_src: Path | None = None
    """Where this tree's servers import `shipyard` from (None: the checkout's `src`;
    `--compiled`: the compiled copy)."""


TEXT_RAW_BATCHES = (1, 8, 32)
"""Raw batch sizes for MiniLM, whose target is "90 % of raw at its best batch size"."""


def raw_batch_sizes(args: argparse.Namespace, model: str) -> list[int]:
    if args.raw_batch_sizes is not None:
        return list(args.raw_batch_sizes)
    return list(TEXT_RAW_BATCHES) if model == "minilm" else [1]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
