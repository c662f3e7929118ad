"""Serving: model lifecycle, dynamic batching, and the V2 protocol over HTTP.

from shipyard.serving import serve, start_in_thread
serve("models/", settings=load_settings(port=8000))
"""

from shipyard.serving.dataplane import DataPlane
from shipyard.serving.lifecycle import Server, build_dataplane
from shipyard.serving.model_config import ModelConfig
from shipyard.serving.server import RunningServer, serve, start_in_thread
from shipyard.serving.settings import ServerSettings, load_settings

__all__ = [
    "DataPlane",
    "ModelConfig",
    "RunningServer",
    "Server",
    "ServerSettings",
    "build_dataplane",
    "load_settings",
    "serve",
    "start_in_thread",
]
