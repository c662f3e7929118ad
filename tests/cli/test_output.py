"""What the command line prints is readable anywhere: not cut to 80 columns, no colour codes."""

from __future__ import annotations

import pytest

from shipyard.cli import output
from shipyard.cli.compression import show_candidates
from shipyard.compression.results import CandidateOutcome


def test_tables_are_not_cut_when_stdout_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    long = "x" * 150
    table = output.table("name", "reason")
    table.add_row("a-rather-long-candidate-name", long)
    output.show(table)
    shown = capsys.readouterr().out
    assert long in shown and "…" not in shown and "\x1b" not in shown


def test_auto_candidate_names_are_shown_whole(capsys: pytest.CaptureFixture[str]) -> None:
    """In a CI log or a pipe, `--auto` names ended as "int8-dynam…" at rich's 80 columns."""
    names = ["int8-dynamic", "int8-dynamic+prune-0.5", "int4-weight-only+optimize-extended"]
    reasons = ["mean cosine 0.981 is below min-cosine 0.99 by 0.009 (a long reason, as they are)"]
    show_candidates(
        [
            CandidateOutcome(name=n, within_budget=False, reasons=reasons, size_ratio=3.9)
            for n in names
        ],
        chosen=names[0],
    )
    shown = capsys.readouterr().out
    for name in names:
        assert name in shown
    assert reasons[0] in shown and "…" not in shown and "\x1b" not in shown


def test_messages_stay_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    text = "wrote " + " ".join(["word"] * 60)
    output.say(f"[green]{text}[/]")
    output.note(text)
    captured = capsys.readouterr()
    assert captured.out == text + "\n" and captured.err == text + "\n"
