"""Every command at every depth shows examples in its --help, and every example parses."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

import pytest

from shipyard.cli import build_parser, main
from shipyard.cli.parsing import examples, walk

_SHELL = {"|", ">", ">>", "<", "&&", "||", ";"}


def _commands() -> list[argparse.ArgumentParser]:
    return list(walk(build_parser()))


def _segments(line: str) -> list[list[str]]:
    """The `shipyard …` commands of one example line (a pipe or redirection splits it)."""
    segments: list[list[str]] = [[]]
    for token in shlex.split(line):
        if token in _SHELL:
            segments.append([])
        else:
            segments[-1].append(token)
    return [s for s in segments if s and s[0] == "shipyard"]


def test_the_tree_holds_every_command_and_action() -> None:
    progs = {p.prog for p in _commands()}
    for expected in ("shipyard keys init", "shipyard audit verify", "shipyard tokens revoke",
                     "shipyard monitoring export", "shipyard drift status", "shipyard demo"):  # fmt: skip
        assert expected in progs


@pytest.mark.parametrize("parser", _commands(), ids=lambda p: p.prog.replace(" ", "-"))
def test_every_example_parses_with_the_real_parser(parser: argparse.ArgumentParser) -> None:
    shown = examples(parser)
    assert shown, f"`{parser.prog} --help` shows no example"
    run = parser.get_default("run")
    for line in shown:
        segments = _segments(line)
        assert segments, f"{parser.prog}: example {line!r} runs no shipyard command"
        matched = False
        for argv in segments:
            try:
                args = build_parser().parse_args(argv[1:])
            except SystemExit as exc:
                pytest.fail(f"{parser.prog}: example {line!r} does not parse (exit {exc.code})")
            if run is not None:
                matched |= getattr(args, "run", None) is run
            else:  # a command with actions: the example runs one of them
                matched |= " ".join(argv).startswith(parser.prog)
        assert matched, f"{parser.prog}: example {line!r} runs another command"


def test_help_shows_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["keys", "init", "--help"])
    assert exc.value.code == 0
    assert "examples:\n  shipyard keys init --dir keys/\n" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "shipyard demo --repo models/\n" in top and "--serve" not in top.split("examples:")[1]


def test_python_dash_m_shipyard_is_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shipyard", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and done.stdout.startswith("shipyard ")


def test_usage_errors_exit_2_and_failures_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compress", "models/none"]) == 2  # says nothing to do: a usage error
    err = capsys.readouterr().err
    assert err.startswith("error: say what to do:") and err.count("\n") == 1
    assert main(["inspect", "no/such/model"]) == 1  # a model that is not there: a failure
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(SystemExit) as exc:
        main(["inspect"])  # argparse's own
    assert exc.value.code == 2
