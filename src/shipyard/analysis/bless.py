"""bless(): analyze + validate a version and record the verdict in its manifest.

The blessing is a manifest field, so the digest covers it and `shipyard.load` verifies it
like everything else. The manifest is replaced atomically in place; a signed version
(model.sig covers manifest.json) is refused unless the caller re-signs it with a key or
asks for the signature to be removed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from shipyard.analysis.analyze import AnalysisResult, analyze
from shipyard.analysis.data import DataSource, read_eval_data
from shipyard.analysis.errors import AnalysisConfigError
from shipyard.analysis.validate import read_config
from shipyard.errors import UsageError
from shipyard.package.manifest import Blessing, Manifest, now
from shipyard.package.store import (
    SIGNATURE_FILE,
    read_verified,
    resolve_version_dir,
    rewrite_version,
)


@dataclass(frozen=True)
class BlessResult:
    path: Path
    blessing: Blessing
    analysis: AnalysisResult
    signature: str
    """What happened to model.sig: "none", "re-signed" or "removed"."""


def bless(
    version_dir: str | Path,
    *,
    config: str | Path,
    data: DataSource,
    label: str | None = None,
    baseline: int | None = None,
    slices: tuple[str, ...] = (),
    resign_key: str | Path | None = None,
    remove_signature: bool = False,
    features: list[str] | None = None,
    profile: bool = False,
) -> BlessResult:
    """Evaluate the version on `data` against `config`'s thresholds and write the verdict
    (ok or not, with the failures) into its manifest; the verdict is recorded either way.

    With `profile`, the same rows (the model inputs read from `data`, labels and slice
    columns left out) also become the version's reference profile for drift, replacing any
    earlier one, in the same rewrite of the manifest."""
    path = resolve_version_dir(Path(version_dir))
    cfg, config_sha = read_config(config)
    if not cfg.thresholds:
        raise AnalysisConfigError(
            f"{config}: no [[thresholds]]; a blessing needs something to check"
        )
    signed = (path / SIGNATURE_FILE).exists()
    if signed and resign_key is None and not remove_signature:
        raise UsageError(
            f"{path} is signed and blessing rewrites manifest.json, which would break "
            f"{SIGNATURE_FILE}; pass --resign KEY (re-sign with your key) or --remove-signature "
            "(sign again afterwards)"
        )
    if resign_key is not None and not Path(resign_key).is_file():
        raise UsageError(f"{resign_key}: private key not found (create one: shipyard keys init)")
    result = analyze(
        path,
        data=data,
        label=label,
        slices=slices,
        baseline=baseline,
        config=cfg,
        features=features,
    )
    assert result.validation is not None  # thresholds exist
    blessing = Blessing(
        ok=result.validation.ok,
        evaluated_at=now(),
        data_sha256=result.data.sha256,
        data_rows=result.data.rows,
        data_source=result.data.source,
        config_sha256=config_sha,
        baseline_version=baseline,
        metrics={k: v for k, v in result.overall.items() if math.isfinite(v) and "[" not in k},
        failures=result.validation.summary(),
    )

    def blessed(_staging: Path, manifest: Manifest) -> Manifest:
        return manifest.model_copy(update={"blessing": blessing})

    steps: list[Callable[[Path, Manifest], Manifest]] = [blessed]
    if profile:
        steps.insert(0, _profile_step(path, data, label=label, features=features))
    resign = None
    if signed and resign_key is not None:
        from shipyard.security.signing import sign_version

        resign = partial(sign_version, private_key=resign_key)

    def update(staging: Path, manifest: Manifest) -> Manifest:
        for step in steps:
            manifest = step(staging, manifest)
        return manifest

    rewrite_version(
        path,
        update,
        remove_signature=signed,
        sign=resign,
    )
    signature = "re-signed" if resign else "removed" if signed else "none"
    return BlessResult(path=path, blessing=blessing, analysis=result, signature=signature)


def _profile_step(
    path: Path, data: DataSource, *, label: str | None, features: list[str] | None
) -> Callable[[Path, Manifest], Manifest]:
    from shipyard.package.profile_io import profile_update

    evaluated = read_eval_data(data, read_verified(path).inputs, label=label, features=features)
    return profile_update(
        path, evaluated.inputs, replace=True, source=f"{evaluated.source} (bless)"
    )[1]


def describe_blessing(blessing: Blessing | None) -> str:
    """One line for `shipyard inspect`."""
    if blessing is None:
        return "not blessed (shipyard bless VERSION_DIR --config eval.toml --data ...)"
    verdict = "blessed" if blessing.ok else f"NOT blessed ({len(blessing.failures)} failure(s))"
    vs = f" vs v{blessing.baseline_version}" if blessing.baseline_version else ""
    shown = ", ".join(f"{k} {v:.4g}" for k, v in list(blessing.metrics.items())[:4])
    first = f"; {blessing.failures[0]}" if blessing.failures else ""
    return (
        f"{verdict}{vs} on {blessing.data_rows} rows (data sha256 {blessing.data_sha256[:12]}…, "
        f"{blessing.evaluated_at.isoformat(timespec='seconds')}): {shown}{first}"
    )
