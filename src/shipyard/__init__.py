"""Shipyard: safe model packages, compression and serving on ONNX Runtime."""

import os as _os

# ONNX Runtime >= 1.32 records a device id and telemetry events under the user's cache on
# import unless told not to; a deployment tool must not phone home or write there by default.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from shipyard.api import PackResult, load, pack  # noqa: E402
from shipyard.errors import ShipyardError  # noqa: E402
from shipyard.importers.base import Tolerance  # noqa: E402
from shipyard.model import Model  # noqa: E402
from shipyard.runtime.base import RuntimeOptions  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Model",
    "PackResult",
    "RuntimeOptions",
    "ShipyardError",
    "Tolerance",
    "__version__",
    "load",
    "pack",
]
