"""Monitoring for `shipyard serve`: a Grafana dashboard and Prometheus alert rules."""

from shipyard.monitoring.config import MonitoringConfig
from shipyard.monitoring.dashboard import dashboard
from shipyard.monitoring.export import Exported, export
from shipyard.monitoring.promql import metric_names
from shipyard.monitoring.rules import alerts, rules

__all__ = ["Exported", "MonitoringConfig", "alerts", "dashboard", "export", "metric_names", "rules"]
