"""How a command is declared: its handler's docstring is its help, description and examples.

    def cmd_scan(args: argparse.Namespace) -> int:
        '''scan a pickle/joblib/torch file opcode by opcode, without loading it

        examples:
          shipyard scan clf.joblib
        '''

The first line is the help in the parent's list; any paragraphs before `example(s):` are
the description; the example lines are the `--help` epilog. A command with actions below it
(`keys init`, `audit verify` …) shows the first example of each. A test parses every
example with the real parser, so an example cannot drift from the flags it shows.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Iterator
from typing import TypeAlias

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler = Callable[[argparse.Namespace], int]

_HEADERS = ("example:", "examples:")


def add_command(sub: Subparsers, name: str, run: Handler) -> argparse.ArgumentParser:
    """A command (or an action of one) that main() runs as `run(args)`."""
    lines = inspect.cleandoc(run.__doc__ or "").splitlines()
    marks = [i for i, line in enumerate(lines) if line.strip() in _HEADERS]
    if not lines or not marks:
        raise ValueError(f"{run.__qualname__}: its docstring needs a help line and examples")
    help_text = lines[0]
    described = "\n".join(lines[1 : marks[0]]).strip()
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=f"{help_text}\n\n{described}" if described else help_text,
        epilog=_epilog([line.strip() for line in lines[marks[0] + 1 :] if line.strip()]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def add_group(
    sub: Subparsers, name: str, help_text: str
) -> tuple[argparse.ArgumentParser, Subparsers]:
    """A command whose work is done by one of its ACTIONs (`keys init`, `tokens list` …)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)
    return parser, actions


def show_children_examples(root: argparse.ArgumentParser) -> None:
    """Give every parser without examples of its own (the root, each group) the first
    example of each command below it."""
    for parser in reversed(list(walk(root))):  # the commands below a parser come first
        if not parser.epilog:
            parser.epilog = _epilog([examples(child)[0] for child in children(parser)])


def examples(parser: argparse.ArgumentParser) -> list[str]:
    """The example command lines of one parser's --help (its epilog)."""
    lines = (parser.epilog or "").splitlines()
    for index, line in enumerate(lines):
        if line.strip() in _HEADERS:
            return [text.strip() for text in lines[index + 1 :] if text.strip()]
    return []


def children(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of the commands or actions directly below `parser`."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if all(child is not seen for seen in found):  # aliases share one parser
                    found.append(child)
    return found


def walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """`parser` and every parser below it, depth first, in declaration order."""
    yield parser
    for child in children(parser):
        yield from walk(child)


def _epilog(lines: list[str]) -> str:
    return _HEADERS[len(lines) > 1] + "\n  " + "\n  ".join(lines)
