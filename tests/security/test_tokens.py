"""API tokens: secrets shown once, hashes only on disk, expiry, revocation and a scope matrix."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shipyard.cli.failures import exit_code
from shipyard.errors import NotFoundError, UsageError
from shipyard.security.fileio import InsecurePermissionsError
from shipyard.security.tokens import Principal, Scope, TokenStore, bearer_token


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "tokens.json")


def test_create_returns_secret_once_and_stores_only_its_hash(store: TokenStore) -> None:
    token = store.create("ci-bot", ["infer:iris", "metadata:*"])
    assert token.startswith("shp_") and len(token) >= 4 + 43  # 32 random bytes, base64url
    text = store.path.read_text()
    assert token not in text and token[4:] not in text
    assert hashlib.sha256(token.encode()).hexdigest() in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    principal = store.authenticate(token)
    assert principal is not None and principal.name == "ci-bot"
    assert [str(s) for s in principal.scopes] == ["infer:iris", "metadata:*"]
    assert store.create("other", ["infer:*"]) != token


def test_unknown_malformed_and_near_miss_tokens_are_rejected(store: TokenStore) -> None:
    token = store.create("ci-bot", ["infer:*"])
    assert store.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.authenticate(token[4:]) is None
    assert store.authenticate("") is None


def expire(store: TokenStore, name: str) -> None:
    """Move a token's expiry into the past (creating an expired token is refused)."""
    doc = json.loads(store.path.read_text())
    for record in doc["tokens"]:
        if record["name"] == name:
            record["expires"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    store.path.write_text(json.dumps(doc))


def test_expiry(store: TokenStore) -> None:
    past = store.create("old", ["infer:*"], expires=timedelta(hours=1))
    expire(store, "old")
    soon = store.create("new", ["infer:*"], expires=timedelta(hours=1))
    assert store.authenticate(past) is None
    assert store.authenticate(soon) is not None
    assert [i.expired() for i in store.list()] == [True, False]
    with pytest.raises(UsageError, match="timezone-aware"):
        store.create("naive", ["infer:*"], expires=datetime(2030, 1, 1))


def test_revoke_reaches_other_store_instances(store: TokenStore) -> None:
    token = store.create("ci-bot", ["infer:*"])
    server_view = TokenStore(store.path)
    assert server_view.authenticate(token) is not None
    store.revoke("ci-bot")
    assert server_view.authenticate(token) is None
    assert store.list() == []
    with pytest.raises(NotFoundError, match="no token named 'ci-bot'"):
        store.revoke("ci-bot")


def test_names_and_scopes_are_validated(store: TokenStore) -> None:
    store.create("ci-bot", ["infer:*"])
    with pytest.raises(UsageError, match="exists"):
        store.create("ci-bot", ["infer:*"])
    for bad in ("infer", "write:*", "infer:", ":iris"):
        with pytest.raises(UsageError, match="bad scope"):
            store.create("x", [bad])
    with pytest.raises(UsageError, match="at least one scope"):
        store.create("x", [])
    with pytest.raises(UsageError, match="bad token name"):
        store.create("../etc", ["infer:*"])


@pytest.mark.parametrize(
    ("scopes", "action", "model", "allowed"),
    [
        (["infer:iris"], "infer", "iris", True),
        (["infer:iris"], "infer", "iris2", False),
        (["infer:iris"], "metadata", "iris", False),
        (["infer:iris"], "admin", "iris", False),
        (["metadata:*"], "metadata", "anything", True),
        (["metadata:*"], "infer", "anything", False),
        (["infer:fraud-*"], "infer", "fraud-v2", True),
        (["infer:fraud-*"], "infer", "Fraud-v2", False),
        (["admin:iris"], "infer", "iris", True),
        (["admin:iris"], "metadata", "iris", True),
        (["admin:iris"], "admin", "iris", True),
        (["admin:iris"], "infer", "digits", False),
        (["infer:iris", "metadata:digits"], "metadata", "digits", True),
        (["infer:iris", "metadata:digits"], "infer", "digits", False),
        ([], "infer", "iris", False),
        (["infer:*"], "delete", "iris", False),
    ],
)
def test_scope_matrix(scopes: list[str], action: str, model: str, allowed: bool) -> None:
    principal = Principal("p", tuple(Scope.parse(s) for s in scopes))
    assert principal.allows(action, model) is allowed


def test_bearer_token_authenticates_to_a_scoped_principal(store: TokenStore) -> None:
    token = store.create("ci-bot", ["infer:iris"])
    assert bearer_token(f"Bearer {token}") == token
    assert bearer_token(f"bearer  {token} ") == token
    assert bearer_token(f"Basic {token}") is None and bearer_token(None) is None
    principal = store.authenticate(token)
    assert principal is not None and principal.name == "ci-bot"
    assert principal.allows("infer", "iris") and not principal.allows("metadata", "iris")
    assert store.authenticate("shp_nope") is None


def test_corrupt_token_file_is_a_clear_error(store: TokenStore) -> None:
    store.path.write_text("{]")
    store.path.chmod(0o600)  # a file open to others is refused before it is read
    with pytest.raises(UsageError, match="not a valid Shipyard token file"):
        store.authenticate("shp_x")


def test_creating_an_expired_token_is_refused(store: TokenStore) -> None:
    for when in (datetime.now(UTC) - timedelta(seconds=1), timedelta(seconds=-1)):
        with pytest.raises(UsageError, match="in the past"):
            store.create("old", ["infer:*"], expires=when)
    assert not store.path.exists()


@pytest.mark.parametrize("mode", [0o666, 0o644, 0o620, 0o604])
def test_token_file_open_to_group_or_others_is_refused(store: TokenStore, mode: int) -> None:
    token = store.create("ci-bot", ["infer:*"])
    store.path.chmod(mode)  # a chmod changes no mtime: the cached read must not hide it
    with pytest.raises(InsecurePermissionsError, match="chmod 600") as caught:
        store.authenticate(token)
    assert exit_code(caught.value) == 2 and f"mode {mode:04o}" in str(caught.value)
    with pytest.raises(InsecurePermissionsError):
        TokenStore(store.path).list()
    store.path.chmod(0o600)
    assert store.authenticate(token) is not None


def test_revoke_keeps_a_record_and_reasons_tell_revoked_from_expired(store: TokenStore) -> None:
    token = store.create("ci-bot", ["infer:*"])
    old = store.create("old", ["infer:*"], expires=timedelta(hours=1))
    expire(store, "old")
    server_view = TokenStore(store.path)
    heard: list[str] = []
    server_view.on_revoke.append(lambda info: heard.append(f"{info.name} by {info.revoked_by}"))
    assert server_view.verify(token).principal is not None  # first read: nothing to report
    info = store.revoke("ci-bot", by="alice")
    assert info.revoked_by == "alice" and info.revoked_at is not None
    record = json.loads(store.path.read_text())["tokens"][0]
    assert record["name"] == "ci-bot" and record["revoked_by"] == "alice"
    assert record["revoked_at"] == info.revoked_at.isoformat()
    assert server_view.verify(token).reason == "revoked"
    assert heard == ["ci-bot by alice"]
    assert server_view.verify(token).reason == "revoked" and len(heard) == 1  # reported once
    assert server_view.verify(old).reason == "expired"
    assert server_view.verify("shp_nope").reason == "invalid_token"
    assert [i.name for i in store.list(revoked=True) if i.revoked_at] == ["ci-bot"]
    again = store.create("ci-bot", ["infer:iris"])  # the name is free again
    assert store.authenticate(again) is not None and store.authenticate(token) is None
    assert os.stat(store.path).st_mode & 0o077 == 0
