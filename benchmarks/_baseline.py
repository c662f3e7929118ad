"""`--baseline REF`: another commit's Shipyard server, measured in the same run as this tree's.

The ref is checked out into a temporary git worktree (detached, removed afterwards); its
server runs on the same Python (the same virtualenv and libraries) with `PYTHONPATH` at that
worktree's `src`, while this tree's server gets `PYTHONPATH` at this checkout's `src`. Both
serve the same model files with the same `model.toml` and take the same load in the same
alternating rounds, so their ratio is the change the code made and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks._rows import SHIPYARD, Row
from benchmarks._tables import ratio

CHECKOUT = Path(__file__).resolve().parent.parent
"""The checkout this benchmark belongs to: the "current" code."""


@dataclass(frozen=True)
class Baseline:
    """The checked-out baseline: what was asked for, the commit it is, its `src` folder."""

    ref: str
    commit: str
    src: Path

    @property
    def server(self) -> str:
        """The server name of the baseline's rows, e.g. 'Shipyard HEAD~1 (1a2b3c4d)'."""
        return f"{SHIPYARD} {self.ref} ({self.commit[:8]})"


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"--baseline: git {' '.join(args)} failed: {message}")
    return done.stdout.strip()


@contextlib.contextmanager
def checked_out(ref: str, work: Path) -> Iterator[Baseline]:
    """`ref` in a detached worktree under `work`, removed (with git's record of it) after."""
    commit = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    tree = work / "baseline-tree"
    _git("worktree", "add", "--detach", "--quiet", str(tree), commit)
    try:
        src = tree / "src"
        if not (src / "shipyard" / "__init__.py").is_file():
            raise SystemExit(f"--baseline {ref}: {commit[:8]} has no src/shipyard package")
        yield Baseline(ref, commit, src)
    finally:
        with contextlib.suppress(SystemExit):
            _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(tree, ignore_errors=True)
        with contextlib.suppress(SystemExit):
            _git("worktree", "prune")


def server_env(src: Path) -> dict[str, str]:
    """The environment of a server whose `shipyard` is imported from `src` alone."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    return env


def twin_of(row: Row, rows: Sequence[Row], baseline: str) -> Row | None:
    """The baseline's row of `row`'s model, request and config (None when it has none)."""
    return next(
        (
            r
            for r in rows
            if r.model == row.model
            and r.server == baseline
            and r.encoding == row.encoding
            and r.config == row.config
        ),
        None,
    )


def paired_ratio(ratios: Sequence[float]) -> str:
    """The median of the rounds' paired ratios, with the lowest and highest: `1.12× (0.98–1.30)`."""
    if not ratios:
        return "—"
    low, high = min(ratios), max(ratios)
    return f"{ratio(statistics.median(ratios), 1.0)} ({low:.2f}–{high:.2f})"


def baseline_table(
    rows: Sequence[Row], model: str, baseline: str, levels: Sequence[int]
) -> list[list[str]]:
    """This tree's Shipyard rows ÷ the baseline's rows of the same request and config."""
    paired = any(row.paired for row in rows if row.model == model)
    header = ["request · config"]
    for c in levels:
        header += [f"req/s ÷ base @{c}", f"p50 ÷ base @{c}", f"p99 ÷ base @{c}"]
        if paired:
            header.append(f"paired req/s ÷ base @{c}")
    table = [header]
    for row in rows:
        if row.model != model or row.server != SHIPYARD:
            continue
        base = twin_of(row, rows, baseline)
        line = [f"{row.encoding} · {row.config}"]
        for c in levels:
            new = row.cells.get(c)
            old = base.cells.get(c) if base is not None else None
            if new is None or old is None:
                line += ["—"] * (4 if paired else 3)
                continue
            line += [
                ratio(new.rps, old.rps),
                ratio(new.p50_ms, old.p50_ms),
                ratio(new.p99_ms, old.p99_ms),
            ]
            if paired:
                line.append(paired_ratio(row.paired.get(c, [])))
        table.append(line)
    return table
