"""CLI commands that run things: serve a repository, build and run the demo."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_serve_commands(sub: Any, add: Callable[[Any, str, str], argparse.ArgumentParser]) -> None:
    """Register `serve` and `demo` (filled in as the serving layer lands)."""


def serve_handlers() -> dict[str, Callable[[argparse.Namespace], int]]:
    return {}
