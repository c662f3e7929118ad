"""The library's front door: `shipyard.pack/load/compress/analyze/serve` are the functions the
commands call, and `import shipyard` does not pull in the web framework."""

from __future__ import annotations

import subprocess
import sys

import pytest

import shipyard


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert shipyard.__all__ == sorted(shipyard.__all__)
    for name in shipyard.__all__:
        assert getattr(shipyard, name) is not None
    assert set(shipyard.__all__) <= set(dir(shipyard))


def test_compress_analyze_and_serve_are_the_library_functions() -> None:
    from shipyard import analyze, compress, serve
    from shipyard.analysis.analyze import analyze as analyze_fn
    from shipyard.compression.pipeline import compress as compress_fn
    from shipyard.serving.server import serve as serve_fn

    assert (compress, analyze, serve) == (compress_fn, analyze_fn, serve_fn)
    assert callable(shipyard.compress) and shipyard.compress is compress_fn


def test_import_shipyard_loads_no_web_framework() -> None:
    code = (
        "import sys, shipyard; print(sorted({'uvicorn', 'starlette', 'grpc'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        shipyard.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
