"""The eval config (TOML) and validation: bounds and changes vs the baseline, overall and per
slice; the result names each failing slice with its numbers.

```toml
[analysis]
slices = ["plan", "plan×region"]
min_slice_size = 30

[bootstrap]
resamples = 500
seed = 0

[[thresholds]]
metric = "accuracy"
slice = "plan=pro"     # omitted: overall; "*": every slice scored
min = 0.9
max_drop = 0.01        # absolute drop vs the baseline
```
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shipyard.analysis.compare import BootstrapConfig, Comparison, SliceComparison
from shipyard.analysis.errors import AnalysisConfigError
from shipyard.analysis.evaluate import TaskChoice
from shipyard.analysis.slices import MIN_SLICE_SIZE, QUANTILE_BINS

OVERALL = "overall"
EVERY_SLICE = "*"


class Threshold(BaseModel):
    """One check. Bounds apply to the candidate's value; changes to candidate − baseline:
    `max_drop` / `max_rise` in the metric's units, `max_relative_drop` / `max_relative_rise`
    as a fraction of the baseline's value."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    metric: str
    slice: str = OVERALL
    min: float | None = None
    max: float | None = None
    max_drop: float | None = Field(default=None, ge=0)
    max_rise: float | None = Field(default=None, ge=0)
    max_relative_drop: float | None = Field(default=None, ge=0)
    max_relative_rise: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _something_to_check(self) -> Threshold:
        if not self.bounds and not self.changes:
            raise ValueError(
                f"threshold on {self.metric!r} checks nothing: give min, max, max_drop, "
                "max_rise, max_relative_drop or max_relative_rise"
            )
        return self

    @property
    def bounds(self) -> bool:
        return self.min is not None or self.max is not None

    @property
    def changes(self) -> bool:
        return any(
            v is not None
            for v in (self.max_drop, self.max_rise, self.max_relative_drop, self.max_relative_rise)
        )


class AnalysisSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    slices: tuple[str, ...] = ()
    min_slice_size: int = Field(default=MIN_SLICE_SIZE, ge=1)
    bins: int = Field(default=QUANTILE_BINS, ge=2, le=100)
    task: TaskChoice = "auto"
    label: str | None = None


class EvalConfig(BaseModel):
    """The whole eval config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    analysis: AnalysisSettings = AnalysisSettings()
    bootstrap: BootstrapConfig = BootstrapConfig()
    thresholds: tuple[Threshold, ...] = ()


def read_config(path: str | Path) -> tuple[EvalConfig, str]:
    """The parsed config and the sha256 of its bytes (recorded in a blessing)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AnalysisConfigError(f"{path}: cannot read the eval config ({exc})") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
        config = EvalConfig.model_validate(data)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AnalysisConfigError(f"{path}: not valid TOML ({exc})") from exc
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3]
        )
        raise AnalysisConfigError(f"{path}: {details}") from exc
    return config, hashlib.sha256(raw).hexdigest()


Check = Literal["min", "max", "max_drop", "max_rise", "max_relative_drop", "max_relative_rise"]


class Failure(BaseModel):
    model_config = ConfigDict(frozen=True)

    metric: str
    slice: str
    check: Check
    value: float
    limit: float
    message: str


class ValidationResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    ok: bool
    failures: list[Failure] = Field(default_factory=list)
    missing_slices: list[str] = Field(default_factory=list)
    """Slices a threshold names that were not scored (absent from the data, or too small)."""
    missing_metrics: list[str] = Field(default_factory=list)
    no_baseline: bool = False
    """Change thresholds exist but no baseline was compared: they could not be checked."""
    checked: int = 0

    def summary(self) -> list[str]:
        lines = [f.message for f in self.failures]
        lines += [f"slice {s!r}: named by a threshold but not scored" for s in self.missing_slices]
        lines += [f"metric {m}: not computed for this model" for m in self.missing_metrics]
        if self.no_baseline:
            lines.append("no baseline: change thresholds need --baseline VERSION")
        return lines


def validate(
    thresholds: tuple[Threshold, ...],
    metrics: dict[str, dict[str, float]],
    comparison: Comparison | None,
    *,
    skipped: dict[str, int] | None = None,
) -> ValidationResult:
    """Check every threshold; `metrics` maps "overall" and each scored slice key to its
    metrics. Not ok when a check fails, a named slice or metric is missing, or change
    thresholds exist without a baseline."""
    failures: list[Failure] = []
    missing_slices: list[str] = []
    missing_metrics: list[str] = []
    no_baseline = False
    checked = 0
    deltas = _deltas(comparison)
    for t in thresholds:
        keys = [k for k in metrics if k != OVERALL] if t.slice == EVERY_SLICE else [t.slice]
        for key in keys:
            if key not in metrics:
                note = f" (skipped: {skipped[key]} rows)" if skipped and key in skipped else ""
                missing_slices.append(key + note)
                continue
            values = metrics[key]
            if t.metric not in values:
                missing_metrics.append(f"{t.metric} ({key})")
                continue
            value = values[t.metric]
            where = "overall" if key == OVERALL else f"slice {key}"
            if t.min is not None:
                checked += 1
                if not value >= t.min:
                    failures.append(
                        _fail(
                            t,
                            key,
                            "min",
                            value,
                            t.min,
                            f"{where}: {t.metric} {value:.4g} is below min {t.min:.4g}",
                        )
                    )
            if t.max is not None:
                checked += 1
                if not value <= t.max:
                    failures.append(
                        _fail(
                            t,
                            key,
                            "max",
                            value,
                            t.max,
                            f"{where}: {t.metric} {value:.4g} is above max {t.max:.4g}",
                        )
                    )
            if not t.changes:
                continue
            if comparison is None:
                no_baseline = True
                continue
            delta = deltas.get(key, {}).get(t.metric)
            if delta is None:
                missing_metrics.append(f"{t.metric} vs baseline ({key})")
                continue
            failures += _change_failures(
                t, key, where, value, delta[1], comparison.baseline_version
            )
            checked += 1
    ok = not failures and not missing_slices and not missing_metrics and not no_baseline
    return ValidationResult(
        ok=ok,
        failures=failures,
        missing_slices=list(dict.fromkeys(missing_slices)),
        missing_metrics=list(dict.fromkeys(missing_metrics)),
        no_baseline=no_baseline,
        checked=checked,
    )


def _change_failures(
    t: Threshold, key: str, where: str, value: float, base: float, version: int
) -> list[Failure]:
    found = []
    drop, rise = base - value, value - base
    relative = abs(base) if base else math.nan
    vs = f"vs baseline v{version} ({base:.4g} → {value:.4g})"
    checks: tuple[tuple[Check, float | None, float, str], ...] = (
        ("max_drop", t.max_drop, drop, "drops by"),
        ("max_rise", t.max_rise, rise, "rises by"),
        ("max_relative_drop", t.max_relative_drop, drop / relative, "drops by a fraction"),
        ("max_relative_rise", t.max_relative_rise, rise / relative, "rises by a fraction"),
    )
    for check, limit, amount, verb in checks:
        if limit is None:
            continue
        if math.isnan(amount) or amount > limit + 1e-12:
            message = f"{where}: {t.metric} {verb} {amount:.4g} {vs}, over {check} {limit:.4g}"
            found.append(_fail(t, key, check, amount, limit, message))
    return found


def _fail(
    t: Threshold, key: str, check: Check, value: float, limit: float, message: str
) -> Failure:
    return Failure(
        metric=t.metric, slice=key, check=check, value=value, limit=limit, message=message
    )


def _deltas(comparison: Comparison | None) -> dict[str, dict[str, tuple[float, float]]]:
    """slice key → metric → (candidate, baseline)."""
    if comparison is None:
        return {}
    parts: list[SliceComparison] = [comparison.overall, *comparison.slices]
    found: dict[str, dict[str, tuple[float, float]]] = {}
    for part in parts:
        values = {m: (d.candidate, d.baseline) for m, d in part.deltas.items()}
        if part.flip_rate is not None:
            values["flip_rate"] = (part.flip_rate.candidate, 0.0)
        found[part.key] = values
    return found
