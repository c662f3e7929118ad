"""Drift as a server reports it: every feature's PSI, KS and JS read from its /metrics."""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from dataclasses import dataclass

from shipyard.errors import ShipyardError, UsageError

DEFAULT_PSI_THRESHOLD = 0.25
"""PSI above which a feature is flagged (0.1-0.25: moderate shift, above: significant)."""


class DriftStatusError(ShipyardError):
    """The server's /metrics could not be read."""


@dataclass(frozen=True)
class FeatureDrift:
    model: str
    version: str
    feature: str
    samples: int
    psi: float
    ks: float | None
    js: float | None
    drifted: bool


def drift_status(url: str, *, token: str | None, threshold: float) -> list[FeatureDrift]:
    """Every feature's drift values read from `url`/metrics, sorted."""
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(url.rstrip("/") + "/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        hint = " (pass --token)" if exc.code in (401, 403) else ""
        raise DriftStatusError(f"{url}/metrics: HTTP {exc.code}{hint}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DriftStatusError(f"{url}/metrics: cannot connect ({exc}); is the server up?") from exc
    if threshold <= 0:
        raise UsageError(f"--psi-threshold {threshold}: must be above 0")
    values: dict[tuple[str, str, str], dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("shipyard_drift_"):
            continue
        stat = family.name.removeprefix("shipyard_drift_")
        for sample in family.samples:
            key = (sample.labels["model"], sample.labels["version"], sample.labels["feature"])
            values.setdefault(key, {})[stat] = sample.value
    rows = []
    for (model, version, feature), stats in sorted(values.items()):
        psi = stats.get("psi", math.nan)
        rows.append(
            FeatureDrift(
                model=model,
                version=version,
                feature=feature,
                samples=int(stats.get("samples", 0)),
                psi=psi,
                ks=stats.get("ks"),
                js=stats.get("js"),
                drifted=psi >= threshold,
            )
        )
    return rows
