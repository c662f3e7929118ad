"""The package manifest: schema, canonical JSON, self-digest and format version checks."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shipyard.errors import FormatVersionError, ManifestError
from shipyard.package.conversion import ConversionCheck
from shipyard.package.profile import ProfileRef
from shipyard.package.tensorspec import TensorSpec
from shipyard.package.warmup import WarmupSample
from shipyard.processing.spec import Processing

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODEL_FILE = "model.onnx"


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Source(BaseModel):
    """Where the model came from: the framework and the converter that produced the ONNX."""

    model_config = ConfigDict(extra="forbid")

    framework: str
    framework_version: str
    converter: str
    converter_version: str


class Step(BaseModel):
    """One operation in a version's lineage (pack, quantize, prune …) with its config."""

    model_config = ConfigDict(extra="forbid")

    op: str
    config: dict[str, Any] = Field(default_factory=dict)
    at: datetime


class Lineage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parent: int | None = None
    steps: list[Step] = Field(default_factory=list)


class EncryptedFile(BaseModel):
    """One external data file encrypted beside the model (see shipyard.security.encryption)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    plain: str
    """The location the graph names (the plaintext file, removed once encrypted)."""
    file: str
    chunk_count: int = Field(ge=1)
    plaintext_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    plaintext_size: int = Field(ge=0)


class Encryption(BaseModel):
    """How `model.onnx` was envelope-encrypted into `file` (see shipyard.security.encryption)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scheme: str
    file: str
    wrapped_key: str
    kek_id: str
    chunk_size: int = Field(ge=1)
    chunk_count: int = Field(ge=1)
    plaintext_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    plaintext_size: int = Field(ge=0)
    data_files: list[EncryptedFile] = Field(default_factory=list, exclude_if=lambda v: not v)
    """External data files, each under its own key derived from the data key."""
    assets: list[EncryptedFile] = Field(default_factory=list, exclude_if=lambda v: not v)
    """Processing assets (tokenizer.json, `assets/*`), encrypted the same way; the server
    decrypts them in memory (see shipyard.processing.runtime)."""


class Blessing(BaseModel):
    """The analysis verdict recorded by `shipyard bless` (see shipyard.analysis.bless)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool
    evaluated_at: datetime
    data_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    data_rows: int = Field(ge=1)
    data_source: str
    config_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    baseline_version: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    """Overall metrics of this version on that data."""
    failures: list[str] = Field(default_factory=list)


class Manifest(BaseModel):
    """Everything a loader needs to trust and run one version of a model."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    version: int = Field(ge=1)
    created: datetime
    source: Source
    opset: int = Field(ge=1)
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    files: dict[str, FileEntry]
    lineage: Lineage = Field(default_factory=Lineage)
    conversion_check: ConversionCheck | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    measured: dict[str, Any] = Field(default_factory=dict)
    # Omitted when absent so digests of unencrypted manifests stay as they were.
    encryption: Encryption | None = Field(default=None, exclude_if=lambda v: v is None)
    warmup: WarmupSample | None = Field(default=None, exclude_if=lambda v: v is None)
    processing: Processing | None = Field(default=None, exclude_if=lambda v: v is None)
    """Declared text/image input and label output handling (see shipyard.processing)."""
    external_data: list[str] = Field(default_factory=list, exclude_if=lambda v: not v)
    """Files (relative to model.onnx) holding tensors the graph keeps outside itself, as ONNX
    does past protobuf's 2 GB limit; such a model is loaded by ONNX Runtime from its path."""
    """The stored sample the server warms up with (see shipyard.package.warmup)."""
    profile: ProfileRef | None = Field(default=None, exclude_if=lambda v: v is None)
    """The reference profile drift is measured against (see shipyard.package.profile)."""
    blessing: Blessing | None = Field(default=None, exclude_if=lambda v: v is None)
    """The analysis verdict (`shipyard bless`), covered by the digest like every field."""
    digest: str = ""

    def compute_digest(self) -> str:
        body = self.model_dump(mode="json", exclude={"digest"})
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(canonical).hexdigest()

    def sealed(self) -> Manifest:
        """A copy whose digest covers every other field, so hand edits are detected."""
        return self.model_copy(update={"digest": self.compute_digest()})

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def now() -> datetime:
    return datetime.now(UTC)


def read_manifest(version_dir: Path) -> Manifest:
    """Parse and validate `manifest.json`; every failure names the file and what is wrong."""
    path = version_dir / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: missing; this folder is not a Shipyard package version")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    fmt = raw.get("format_version")
    if not isinstance(fmt, int):
        raise ManifestError(f"{path}: 'format_version' is missing or not an integer")
    if fmt > FORMAT_VERSION:
        raise FormatVersionError(
            f"{path}: written in package format {fmt}, this Shipyard reads up to "
            f"{FORMAT_VERSION}; upgrade Shipyard to load it"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise ManifestError(f"{path}: does not follow the manifest schema ({details})") from exc
    if manifest.digest != manifest.compute_digest():
        raise ManifestError(
            f"{path}: content digest does not match; the manifest was edited after packing"
        )
    return manifest
