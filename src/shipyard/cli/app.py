"""`shipyard`: the parser of every command, and main(), where errors become exit codes."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from shipyard.cli import (
    access,
    analysis,
    compression,
    deploy,
    drift,
    keys,
    monitoring,
    output,
    package,
    rollout,
    serve,
)
from shipyard.cli.failures import USAGE, error_line, exit_code
from shipyard.cli.parsing import Handler, show_children_examples

COMMANDS = (
    package, serve, rollout, compression, keys, access, monitoring, drift, analysis, deploy
)  # fmt: skip
"""The modules that declare commands, in the order `shipyard --help` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shipyard",
        description="Package, compress and serve trained models on ONNX Runtime.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of errors (also: SHIPYARD_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    show_children_examples(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from shipyard import __version__

        output.write(f"shipyard {__version__}")
        return 0
    run: Handler | None = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return USAGE
    debug = args.debug or os.environ.get("SHIPYARD_DEBUG", "") not in ("", "0")
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        code = exit_code(exc)
        if debug or code is None:
            raise  # a bug, or asked for: the traceback says where
        output.fail(error_line(exc))
        return code
