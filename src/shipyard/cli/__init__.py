"""The `shipyard` command line: it parses arguments, calls library functions and prints.

One module per group of commands, each declaring its commands with `parsing.add_command`
and printing only through `output`; `failures` maps errors to exit codes (0 ok, 1 failed,
2 usage error). The library itself never prints.
"""

from shipyard.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
