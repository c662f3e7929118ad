"""Shipyard: safe model packages, compression and serving on ONNX Runtime."""

import os as _os

# ONNX Runtime >= 1.32 records a device id and telemetry events under the user's cache on
# import unless told not to; a deployment tool must not phone home or write there by default.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from shipyard.api import ImportResult, PackResult, import_version, load, pack
from shipyard.errors import ShipyardError
from shipyard.model import Model
from shipyard.package.conversion import Tolerance
from shipyard.runtime.base import RuntimeOptions

__version__ = "0.1.0"

__all__ = [
    "ImportResult",
    "Model",
    "PackResult",
    "RuntimeOptions",
    "ShipyardError",
    "Tolerance",
    "__version__",
    "import_version",
    "load",
    "pack",
]
