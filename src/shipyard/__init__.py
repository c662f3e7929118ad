"""Shipyard: safe model packages, compression and serving on ONNX Runtime.

The front door is a handful of functions, the same operations the command line runs:
`pack(...)`, `load(...)`, `import_version(...)`, `compress(...)`, `analyze(...)` and
`serve(...)`. The last three are imported on first use (`shipyard.compress` is
`shipyard.compression.compress`): analysis needs pandas and serving a web framework, and
`import shipyard` should not pay for either.
"""

import importlib as _importlib
import os as _os
from typing import TYPE_CHECKING, Any

# ONNX Runtime >= 1.32 records a device id and telemetry events under the user's cache on
# import unless told not to; a deployment tool must not phone home or write there by default.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from shipyard.api import ImportResult, PackResult, import_version, load, pack
from shipyard.errors import ShipyardError
from shipyard.model import Model
from shipyard.package.conversion import Tolerance
from shipyard.runtime.base import RuntimeOptions

if TYPE_CHECKING:
    from shipyard.analysis.analyze import analyze
    from shipyard.compression.pipeline import compress
    from shipyard.serving.server import serve

__version__ = "0.1.0"

__all__ = [
    "ImportResult",
    "Model",
    "PackResult",
    "RuntimeOptions",
    "ShipyardError",
    "Tolerance",
    "__version__",
    "analyze",
    "compress",
    "import_version",
    "load",
    "pack",
    "serve",
]

_ON_USE = {
    "analyze": "shipyard.analysis.analyze",
    "compress": "shipyard.compression.pipeline",
    "serve": "shipyard.serving.server",
}


def __getattr__(name: str) -> Any:
    module = _ON_USE.get(name)
    if module is None:
        raise AttributeError(f"module 'shipyard' has no attribute {name!r}")
    return getattr(_importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_ON_USE})
