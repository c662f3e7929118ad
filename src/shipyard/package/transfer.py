"""Copy a verified package version into a repository under a new number and/or name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.errors import UsageError
from shipyard.package.manifest import Lineage, Manifest, Step, now
from shipyard.package.store import (
    SIGNATURE_FILE,
    check_name,
    next_version,
    read_verified,
    resolve_version_dir,
    write_version,
)


@dataclass(frozen=True)
class ImportResult:
    """Where the copy went, its sealed manifest, and what the caller still has to do."""

    path: Path
    manifest: Manifest
    source: Path
    signature_dropped: bool
    """The source was signed; its model.sig covers the old manifest, so it was not copied."""

    @property
    def next_steps(self) -> tuple[str, ...]:
        if not self.signature_dropped:
            return ()
        return (
            f"{self.source / SIGNATURE_FILE} was not copied (it signs the old manifest); "
            f"re-sign the copy: shipyard sign {self.path} --key KEY.pem",
        )


def import_version(
    source: str | Path,
    *,
    repo: str | Path,
    name: str | None = None,
    version: int | None = None,
) -> ImportResult:
    """Copy the package version at `source` into `repo` as NAME/VERSION (next free number).

    Every file is verified against the source manifest before and while it is copied; the
    manifest is re-sealed with the new name and version and records the import in its
    lineage. A signature is not copied (re-sign the copy). An encrypted package keeps only
    its own name and version (also the default for it): its key is bound to them.
    """
    version_dir = resolve_version_dir(Path(source))
    old = read_verified(version_dir, check_folder=False)
    new_name = check_name(name) if name is not None else old.name
    if version is not None and version < 1:
        raise UsageError(f"version {version}: version numbers start at 1")
    if version is not None:
        target = version
    elif old.encryption is not None:
        target = old.version  # the only number its key allows
    else:
        target = next_version(Path(repo), new_name)
    if old.encryption is not None and (new_name, target) != (old.name, old.version):
        raise UsageError(
            f"{version_dir}: encrypted package {old.name} version {old.version} cannot become "
            f"{new_name} version {target} (its key is bound to name and version); import the "
            "plaintext package, then encrypt the copy with shipyard encrypt"
        )
    config: dict[str, Any] = {
        "source": str(version_dir),
        "name": old.name,
        "version": old.version,
        "digest": old.digest,
    }
    parent = old.lineage.parent
    if new_name != old.name:
        config["parent"] = parent  # a version number of the old name means nothing here
        parent = None
    lineage = Lineage(
        parent=parent, steps=[*old.lineage.steps, Step(op="import", config=config, at=now())]
    )
    manifest = old.model_copy(update={"name": new_name, "version": target, "lineage": lineage})
    files = {rel: version_dir / rel for rel in old.files}
    path, sealed = write_version(
        Path(repo),
        manifest,
        files,
        # an encrypted copy must keep its number; a plain one may take the next free one
        version_given=version is not None or old.encryption is not None,
        expected=old.files,
    )
    return ImportResult(
        path=path,
        manifest=sealed,
        source=version_dir,
        signature_dropped=(version_dir / SIGNATURE_FILE).is_file(),
    )
