"""API tokens: 256-bit bearer secrets stored only as SHA-256 hashes, with scopes and expiry.

A scope is `action:model-pattern`: action `infer`, `metadata` or `admin` (admin implies the
other two), pattern an fnmatch glob over model names (`iris`, `fraud-*`, `*`). Anything not
granted by a scope is denied. The token file is JSON, written atomically with mode 0600, and
re-read when it changes on disk, so `shipyard tokens revoke` reaches a running server. A file
that group or others may read or write is refused. Revoking keeps the record with
`revoked_at` and `revoked_by`, so the file itself says who revoked what and when, and a
server that re-reads the file hears of each new revocation (`TokenStore.on_revoke`).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, cast

from shipyard.errors import NotFoundError, UsageError
from shipyard.security.fileio import check_private

Action = Literal["infer", "metadata", "admin"]
ACTIONS: tuple[Action, ...] = ("infer", "metadata", "admin")
TOKEN_PREFIX = "shp_"
TOKEN_FILE_ENV = "SHIPYARD_TOKEN_FILE"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_FORMAT = 1
_Records = list[dict[str, Any]]  # an alias, since TokenStore.list shadows the builtin in the class
Refusal = Literal["missing_token", "invalid_token", "expired", "revoked", "insufficient_scope"]
"""Why a call was refused, as `shipyard_auth_failures_total{reason}` counts it."""


@dataclass(frozen=True)
class Scope:
    action: Action
    pattern: str

    @classmethod
    def parse(cls, text: str) -> Scope:
        action, sep, pattern = text.partition(":")
        if not sep or not pattern or action not in ACTIONS:
            raise UsageError(
                f"bad scope {text!r}: expected ACTION:MODEL-PATTERN with ACTION one of "
                f"{', '.join(ACTIONS)} (e.g. 'infer:iris', 'metadata:*')"
            )
        return cls(action, pattern)

    def allows(self, action: str, model: str) -> bool:
        if self.action != action and self.action != "admin":
            return False
        return fnmatchcase(model, self.pattern)

    def __str__(self) -> str:
        return f"{self.action}:{self.pattern}"


@dataclass(frozen=True)
class Principal:
    """Who a token authenticated as, and what it may do."""

    name: str
    scopes: tuple[Scope, ...]
    expires: datetime | None = None

    def allows(self, action: str, model: str) -> bool:
        """True only when some scope grants `action` on `model` (default deny)."""
        return any(scope.allows(action, model) for scope in self.scopes)


@dataclass(frozen=True)
class TokenInfo:
    """A stored token without its secret (the store never has the secret)."""

    name: str
    scopes: tuple[Scope, ...]
    created: datetime
    expires: datetime | None
    revoked_at: datetime | None = None
    revoked_by: str | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and (now or _now()) >= self.expires


@dataclass(frozen=True)
class Verdict:
    """What `TokenStore.verify` found: the principal, or why there is none."""

    principal: Principal | None
    reason: Refusal | None = None


class TokenStore:
    """Tokens in one JSON file; safe to share between threads of one server."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._records: _Records = []
        self._revoked_seen: set[tuple[str, str]] | None = None
        """(sha256, revoked_at) of revocations already reported; None before the first read."""
        self.on_revoke: list[Callable[[TokenInfo], None]] = []
        """Called (under the store's lock) for each revocation found when the file is re-read
        after the first read, e.g. one `shipyard tokens revoke` made while a server runs."""

    def create(
        self,
        name: str,
        scopes: list[str] | tuple[str, ...],
        expires: datetime | timedelta | None = None,
    ) -> str:
        """Add a token and return its secret; this is the only time the secret exists."""
        if not _NAME.match(name):
            raise UsageError(f"bad token name {name!r}: letters, digits and _ . @ - (max 64)")
        parsed = tuple(Scope.parse(s) for s in scopes)
        if not parsed:
            raise UsageError("a token needs at least one scope (e.g. --scope 'infer:iris')")
        when = _now() + expires if isinstance(expires, timedelta) else expires
        if when is not None and when.tzinfo is None:
            raise UsageError("expiry must be timezone-aware (e.g. 2030-01-01T00:00:00+00:00)")
        if when is not None and when <= _now():
            raise UsageError(
                f"expiry {when.isoformat(timespec='seconds')} is in the past: the token would "
                "never work; give a future time or a lifetime (e.g. --expires 30d)"
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            records = self._load()
            if any(r["name"] == name and not r.get("revoked_at") for r in records):
                raise UsageError(
                    f"a token named {name!r} exists; revoke it first or pick a new name"
                )
            records.append(
                {
                    "name": name,
                    "sha256": _hash(token),
                    "scopes": [str(s) for s in parsed],
                    "created": _now().isoformat(),
                    "expires": when.isoformat() if when else None,
                }
            )
            self._save(records)
        return token

    def list(self, *, revoked: bool = False) -> list[TokenInfo]:
        """The tokens not revoked; with `revoked`, the revocation records too."""
        with self._lock:
            infos = [_info(r) for r in self._load()]
        return [i for i in infos if revoked or i.revoked_at is None]

    def revoke(self, name: str, *, by: str | None = None) -> TokenInfo:
        """Revoke the live token `name`; its record stays, with `revoked_at` and `revoked_by`
        (default: the local user name), as the record of who revoked it."""
        who = by or _local_user()
        with self._lock:
            records = self._load()
            live = [r for r in records if r["name"] == name and not r.get("revoked_at")]
            if not live:
                gone = [r for r in records if r["name"] == name]
                when = f" (revoked {gone[-1]['revoked_at']})" if gone else ""
                raise NotFoundError(f"no token named {name!r} in {self.path}{when}")
            updated = [
                {**r, "revoked_at": _now().isoformat(), "revoked_by": who} if r is live[0] else r
                for r in records
            ]
            self._save(updated)
            return _info(next(r for r in updated if r["sha256"] == live[0]["sha256"]))

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a live token, or None (unknown, revoked, expired or malformed)."""
        return self.verify(token).principal

    def verify(self, token: str) -> Verdict:
        """The principal of a live token, or why not: invalid_token, expired or revoked."""
        if not token.startswith(TOKEN_PREFIX):
            return Verdict(None, "invalid_token")
        digest = _hash(token)
        with self._lock:
            records = self._load()
        match: dict[str, Any] | None = None
        # Compare against every record, without stopping early, in constant time each.
        for record in records:
            if hmac.compare_digest(record["sha256"], digest):
                match = record
        if match is None:
            return Verdict(None, "invalid_token")
        info = _info(match)
        if info.revoked_at is not None:
            return Verdict(None, "revoked")
        if info.expired():
            return Verdict(None, "expired")
        return Verdict(Principal(info.name, info.scopes, info.expires))

    def _load(self) -> _Records:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._records = None, []
            return []
        check_private(self.path, what="token file", st=st)  # every time: chmod keeps mtime
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._records = _read(self.path)
            self._stamp = stamp
            self._note_revocations(self._records)
        return list(self._records)

    def _note_revocations(self, records: _Records) -> None:
        revoked = {
            (str(r["sha256"]), str(r["revoked_at"])): r for r in records if r.get("revoked_at")
        }
        seen, self._revoked_seen = self._revoked_seen, set(revoked)
        if seen is None:
            return  # the first read: these predate this store
        for key in sorted(set(revoked) - seen, key=lambda k: k[1]):
            info = _info(revoked[key])
            for listener in self.on_revoke:
                listener(info)

    def _save(self, records: _Records) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"format": _FORMAT, "tokens": records}, indent=2, sort_keys=True) + "\n"
        fd, tmp_name = tempfile.mkstemp(prefix=".tokens-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, self.path)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        self._stamp = None
        self._records = records
        if self._revoked_seen is not None:  # this store's own revocations are not news to it
            self._revoked_seen = {
                (str(r["sha256"]), str(r["revoked_at"])) for r in records if r.get("revoked_at")
            }


def bearer_token(authorization: str | None) -> str | None:
    """The token from an `Authorization: Bearer …` header value, else None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def _read(path: Path) -> _Records:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        records = raw["tokens"]
        for r in records:
            _info(r)
            if not isinstance(r["sha256"], str):
                raise TypeError("sha256 is not a string")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a valid Shipyard token file ({exc})") from exc
    return cast(_Records, records)


def _info(record: dict[str, Any]) -> TokenInfo:
    expires = record.get("expires")
    revoked = record.get("revoked_at")
    by = record.get("revoked_by")
    return TokenInfo(
        name=str(record["name"]),
        scopes=tuple(Scope.parse(s) for s in record["scopes"]),
        created=datetime.fromisoformat(record["created"]),
        expires=datetime.fromisoformat(expires) if expires else None,
        revoked_at=datetime.fromisoformat(revoked) if revoked else None,
        revoked_by=str(by) if by is not None else None,
    )


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers) and no $USER
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)
