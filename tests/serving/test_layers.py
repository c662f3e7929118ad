"""Layering: the data plane and what it imports reach no web framework or transport."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

WEB = ("starlette", "uvicorn", "grpc", "httpx", "fastapi")


def _imports(module: str) -> set[str]:
    """Modules `module`'s own file imports (absolute names; package __init__ files not read)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    origin = Path(spec.origin)  # a module compiled by mypyc (benchmarks/_compiled.py): its .py
    source = (
        origin if origin.suffix == ".py" else origin.with_name(f"{origin.name.split('.')[0]}.py")
    )
    tree = ast.parse(source.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _reach(start: str) -> dict[str, str]:
    """Every module `start` imports, directly or through shipyard modules -> who imports it."""
    seen: dict[str, str] = {start: ""}
    todo = [start]
    while todo:
        current = todo.pop()
        for name in _imports(current):
            if name in seen:
                continue
            if name.startswith("shipyard."):
                spec = importlib.util.find_spec(name) if _is_module(name) else None
                if spec is None or spec.origin is None or spec.origin.endswith("__init__.py"):
                    continue
                todo.append(name)
            seen[name] = current
    return seen


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_the_data_plane_imports_no_web_framework() -> None:
    reached = _reach("shipyard.serving.dataplane")
    web = {m: by for m, by in reached.items() if m.split(".")[0] in WEB}
    assert not web, f"the data plane reaches a web framework: {web}"
