"""The example model repository (tabular, iris, digits, minilm), built locally and cached."""

from shipyard.demo.build import DEMO_NAMES, DemoResult, build_demo_repository, default_cache

__all__ = ["DEMO_NAMES", "DemoResult", "build_demo_repository", "default_cache"]
