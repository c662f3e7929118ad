"""What a pickle scan found: one Finding per problem, one ScanReport per file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    """One reason a file is not safe to load, at a byte position of its (decompressed) stream."""

    position: int
    opcode: str
    global_name: str | None
    reason: str
    member: str | None = None  # the file inside a zip archive, if any

    def describe(self) -> str:
        """One line for error messages: where, which opcode, why."""
        where = f"{self.member}@{self.position}" if self.member else f"byte {self.position}"
        return f"{where} {self.opcode}: {self.reason}"


@dataclass(frozen=True)
class ScanReport:
    """The globals and findings of one scanned file; safe only when nothing was found."""

    path: str
    format: str  # pickle | joblib | joblib-compressed:<codec> | torch-zip | torch-export | zip ...
    globals: tuple[str, ...]
    findings: tuple[Finding, ...]
    pickles: int

    @property
    def safe(self) -> bool:
        """True only when the scan found nothing at all."""
        return not self.findings
