"""The model repository as the server sees it: models, versions, configs and change marks.

Only finished versions are seen: `shipyard.pack` writes into hidden `.tmp-*` folders and
renames them into place, and hidden entries are skipped here. A version copied in by other
means may be caught half-written; its fingerprint (names, sizes and mtimes of its files)
then changes at the next scan, which is what tells the manager to try it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shipyard.package.store import list_versions
from shipyard.serving.errors import ModelConfigError
from shipyard.serving.model_config import MODEL_CONFIG_FILE, ModelConfig, read_model_config

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class ModelOnDisk:
    """One model folder at scan time."""

    name: str
    path: Path
    config: ModelConfig | None
    """The parsed model.toml (defaults when absent); None when it is invalid."""
    config_error: str | None
    """Why model.toml was refused; None when it is fine or absent."""
    versions: dict[int, Fingerprint]
    """Version number -> fingerprint of the files in that version folder."""


class ModelRepository:
    """Reads `ROOT/NAME/VERSION/` folders; no state beyond the root path."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def model_names(self) -> list[str]:
        """Folders under the root that hold at least one version or a model.toml."""
        if not self.root.is_dir():
            return []
        names = []
        for child in sorted(self.root.iterdir()):
            if child.name.startswith(".") or not child.is_dir():
                continue
            if list_versions(child) or (child / MODEL_CONFIG_FILE).is_file():
                names.append(child.name)
        return names

    def scan(self, name: str) -> ModelOnDisk | None:
        """The model folder `name` now, or None when it is gone."""
        path = self.root / name
        if name.startswith(".") or "/" in name or not path.is_dir():
            return None
        versions = list_versions(path)
        has_config = (path / MODEL_CONFIG_FILE).is_file()
        if not versions and not has_config:
            return None
        config: ModelConfig | None
        try:
            config = read_model_config(path)
            error = None
        except ModelConfigError as exc:
            config, error = None, str(exc)
        return ModelOnDisk(
            name=name,
            path=path,
            config=config,
            config_error=error,
            versions={v: fingerprint(path / str(v)) for v in versions},
        )


def fingerprint(version_dir: Path) -> Fingerprint:
    """Names, sizes and mtimes of the files in a version folder: changes when it does."""
    marks = []
    try:
        for child in version_dir.rglob("*"):
            if child.is_file():
                stat = child.stat()
                marks.append(
                    (child.relative_to(version_dir).as_posix(), stat.st_size, stat.st_mtime_ns)
                )
    except OSError:  # the folder changed under us (being copied or removed); rescan next time
        marks.append(("<unreadable>", -1, -1))
    return tuple(sorted(marks))
