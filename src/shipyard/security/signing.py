"""Sign and verify package versions in the OpenSSF model-signing format (key-based, model.sig).

The signature is a Sigstore bundle holding a DSSE envelope over an in-toto statement that
lists every file of the version folder (manifest.json included) with its SHA-256, exactly as
`model_signing sign key` writes it, so `model_signing verify key` accepts our signatures and
we accept its. Keyless (Sigstore/OIDC) signing needs network access to Fulcio and Rekor and
is not offered here.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import model_signing.hashing
import model_signing.signing
import model_signing.verifying
from cryptography import exceptions as crypto_exceptions

from shipyard.package.hashing import sha256_file
from shipyard.package.store import SIGNATURE_FILE, place_file, read_verified
from shipyard.security.errors import KeyFileError, SignatureError
from shipyard.security.fileio import InsecurePermissionsError

# model_signing ignores these by default; mirror it when naming unexpected files.
_GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")


@dataclass(frozen=True)
class VerifiedSignature:
    """A signature that verified: where it is and which files it covers."""

    signature: Path
    public_key: Path
    digests: dict[str, str]

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(sorted(self.digests))


def signature_path(version_dir: Path) -> Path:
    return Path(version_dir) / SIGNATURE_FILE


def sign_version(
    version_dir: str | Path, private_key: str | Path, *, password: str | None = None
) -> Path:
    """Verify the package, then sign every file in it; writes and returns `model.sig`.

    Signing after verification means a package tampered with before signing is refused
    rather than blessed. Re-signing replaces an existing signature atomically.
    """
    version_dir = Path(version_dir)
    private_key = Path(private_key)
    read_verified(version_dir)
    if not private_key.is_file():
        raise KeyFileError(f"{private_key}: private key not found (create one: shipyard keys init)")
    try:
        signer = model_signing.signing.Config()  # type: ignore[no-untyped-call]
        config = signer.use_elliptic_key_signer(private_key=private_key, password=password)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"{private_key}: not a usable EC P-256/384/521 PEM private key ({exc})"
        ) from exc
    config.set_hashing_config(_hashing_config())
    # Written next to the version folder, then renamed in by the store: never inside it
    # while hashing, and a crash never leaves a half-written model.sig.
    place_file(version_dir, SIGNATURE_FILE, lambda tmp: config.sign(version_dir, tmp))
    return signature_path(version_dir)


def verify_version(version_dir: str | Path, public_key: str | Path) -> VerifiedSignature:
    """Check model.sig against `public_key` and every file; SignatureError names what differs."""
    version_dir = Path(version_dir)
    public_key = Path(public_key)
    sig = signature_path(version_dir)
    if not sig.is_file():
        raise SignatureError(
            f"{version_dir}: not signed (no {SIGNATURE_FILE}); sign it with "
            f"`shipyard sign {version_dir} --key KEY` or load it without requiring a signature"
        )
    if not public_key.is_file():
        raise KeyFileError(f"{public_key}: public key not found")
    _check_not_writable_by_others(public_key)
    try:
        verifier = model_signing.verifying.Config()  # type: ignore[no-untyped-call]
        config = verifier.use_elliptic_key_verifier(public_key=public_key)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{public_key}: not a usable EC PEM public key ({exc})") from exc
    config.set_hashing_config(_hashing_config())
    try:
        config.verify(version_dir, sig)
    except crypto_exceptions.InvalidSignature as exc:
        raise SignatureError(
            f"{sig}: signature does not verify with {public_key} "
            "(the signature or its statement was altered)",
            files=(SIGNATURE_FILE,),
        ) from exc
    except ValueError as exc:
        text = str(exc)
        if text.startswith("Signature mismatch"):
            raise _mismatch_error(version_dir, sig) from exc
        if text.startswith("Key mismatch"):
            raise SignatureError(
                f"{sig}: signed with a different key than {public_key}; "
                "verify with the signer's public key or re-sign",
                files=(SIGNATURE_FILE,),
            ) from exc
        raise SignatureError(f"{sig}: cannot verify ({text})", files=(SIGNATURE_FILE,)) from exc
    except Exception as exc:  # malformed bundles surface as many parser exception types
        raise SignatureError(
            f"{sig}: not a readable model-signing signature ({type(exc).__name__}: {exc})",
            files=(SIGNATURE_FILE,),
        ) from exc
    return VerifiedSignature(sig, public_key, _signed_digests(sig))


def _hashing_config() -> model_signing.hashing.Config:
    # The model_signing CLI's defaults (files, sha256, no symlinks, git paths ignored) plus
    # the signature itself, so that `model_signing verify key` needs no extra flags.
    hashing = model_signing.hashing.Config()  # type: ignore[no-untyped-call]
    return hashing.set_ignored_paths(paths=[SIGNATURE_FILE])


def _mismatch_error(version_dir: Path, sig: Path) -> SignatureError:
    """Name the files that differ; only called after the envelope's signature verified."""
    expected = _signed_digests(sig)
    changed: list[str] = []
    missing: list[str] = []
    for name, digest in sorted(expected.items()):
        target = version_dir / name
        if not target.is_file():
            missing.append(name)
        elif sha256_file(target) != digest:
            changed.append(name)
    extra = sorted(
        p.relative_to(version_dir).as_posix()
        for p in version_dir.rglob("*")
        if p.is_file()
        and p.name != SIGNATURE_FILE
        and p.relative_to(version_dir).parts[0] not in _GIT_PATHS
        and p.relative_to(version_dir).as_posix() not in expected
    )
    parts = []
    if changed:
        parts.append(f"changed since signing: {', '.join(changed)}")
    if missing:
        parts.append(f"missing: {', '.join(missing)}")
    if extra:
        parts.append(f"not covered by the signature: {', '.join(extra)}")
    files = tuple(changed + missing + extra)
    first = version_dir / files[0] if files else version_dir
    detail = "; ".join(parts) or "file digests differ"
    return SignatureError(f"{first}: does not match {sig.name} ({detail})", files=files)


def _signed_digests(sig: Path) -> dict[str, str]:
    """`{file: sha256}` from the in-toto statement inside the bundle."""
    try:
        bundle = json.loads(sig.read_text(encoding="utf-8"))
        payload: dict[str, Any] = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        resources = payload["predicate"]["resources"]
        return {str(r["name"]): str(r["digest"]) for r in resources}
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise SignatureError(f"{sig}: malformed signature bundle ({exc})") from exc


def _check_not_writable_by_others(path: Path) -> None:
    """A public key may be world-readable, but one that others can replace lets them sign."""
    if os.name != "posix":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o022:
        raise InsecurePermissionsError(
            f"{path}: public key is writable by group or others (mode {mode:04o}), so anyone "
            f"could swap in their own key; restrict it with `chmod 644 {path}`"
        )
