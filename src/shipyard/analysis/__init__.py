"""Analysis: evaluate a package on labelled data, per slice, against a baseline version;
validate the figures against thresholds, bless the version, draw an HTML report."""

from shipyard.analysis.analyze import AnalysisResult, analyze
from shipyard.analysis.compare import BootstrapConfig, Comparison
from shipyard.analysis.errors import AnalysisConfigError, AnalysisDataError, ValidationFailed
from shipyard.analysis.validate import EvalConfig, Threshold, ValidationResult, read_config

__all__ = [
    "AnalysisConfigError",
    "AnalysisDataError",
    "AnalysisResult",
    "BootstrapConfig",
    "Comparison",
    "EvalConfig",
    "Threshold",
    "ValidationFailed",
    "ValidationResult",
    "analyze",
    "read_config",
]
