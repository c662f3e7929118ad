"""Who may call the server and the record of who did: `shipyard tokens` and `shipyard audit`."""

from __future__ import annotations

import argparse
import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from shipyard.cli import output
from shipyard.cli.parsing import Subparsers, add_command, add_group
from shipyard.errors import UsageError

if TYPE_CHECKING:
    from shipyard.security.audit_chain import AuditHead
    from shipyard.security.tokens import TokenStore

_DURATION = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def register(sub: Subparsers) -> None:
    _register_tokens(sub)
    _register_audit(sub)


def _register_tokens(sub: Subparsers) -> None:
    t, actions = add_group(
        sub, "tokens", "create, list and revoke API tokens (stored as hashes only)"
    )
    t.add_argument(
        "--file",
        type=Path,
        default=None,
        help="token file (default: $SHIPYARD_TOKEN_FILE or tokens.json)",
    )
    tc = add_command(actions, "create", cmd_tokens_create)
    tc.add_argument("--name", required=True)
    tc.add_argument(
        "--scope", action="append", required=True, help="ACTION:MODEL-PATTERN; repeatable"
    )
    tc.add_argument("--expires", help="lifetime (30d, 12h, 90m, 2w) or an ISO date/time")
    tc.add_argument("--json", action="store_true", help="machine-readable output")
    tl = add_command(actions, "list", cmd_tokens_list)
    tl.add_argument("--json", action="store_true", help="machine-readable output")
    tl.add_argument("--revoked", action="store_true", help="also list revoked tokens")
    tr = add_command(actions, "revoke", cmd_tokens_revoke)
    tr.add_argument("name")
    for action in (tc, tl, tr):  # --file also after the action; SUPPRESS keeps the parent's value
        action.add_argument("--file", type=Path, default=argparse.SUPPRESS, help="token file")


def _register_audit(sub: Subparsers) -> None:
    _, actions = add_group(
        sub, "audit", "verify the audit log's HMAC chain, print its head, or rotate it"
    )
    av = add_command(actions, "verify", cmd_audit_verify)
    # rotated files, oldest first, then the current one: one chain
    av.add_argument("log", type=Path, nargs="+", help="log files, oldest first")
    _audit_key(av)
    av.add_argument("--json", action="store_true", help="machine-readable output")
    av.add_argument("--head", type=Path, help="a saved head (JSON) the log must still contain")
    ah = add_command(actions, "head", cmd_audit_head)
    ah.add_argument("log", type=Path)
    _audit_key(ah)
    ah.add_argument("--json", action="store_true", help="machine-readable output (the default)")
    ar = add_command(actions, "rotate", cmd_audit_rotate)
    ar.add_argument("log", type=Path)
    _audit_key(ar)
    ar.add_argument("--json", action="store_true", help="machine-readable output")


def _audit_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key-file", type=Path, help="audit key file (default: $SHIPYARD_AUDIT_KEY)"
    )


def _store(args: argparse.Namespace) -> TokenStore:
    from shipyard.security.tokens import TOKEN_FILE_ENV, TokenStore

    return TokenStore(args.file or Path(os.environ.get(TOKEN_FILE_ENV, "tokens.json")))


def cmd_tokens_create(args: argparse.Namespace) -> int:
    """create a token and print it once

    examples:
      shipyard tokens create --name ci-bot --scope 'infer:iris' --scope 'metadata:*'
      shipyard tokens create --name nightly --scope 'admin:*' --expires 30d --json
    """
    token = _store(args).create(args.name, args.scope, expires=_expiry(args.expires))
    if args.json:
        output.print_json({"name": args.name, "token": token})
    else:
        output.write(token)
        output.note("this token is shown only once; store it now")
    return 0


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    """revoke a token by name

    example:
      shipyard tokens revoke ci-bot --file secrets/tokens.json
    """
    store = _store(args)
    info = store.revoke(args.name)
    when = info.revoked_at.isoformat(timespec="seconds") if info.revoked_at else "?"
    output.say(
        f"[green]revoked[/] {args.name} (recorded in {store.path}: revoked_at {when}, "
        f"revoked_by {info.revoked_by}; a server with an audit log records it on its next "
        "read of the file)"
    )
    return 0


def cmd_tokens_list(args: argparse.Namespace) -> int:
    """list tokens (names, scopes, expiry; never secrets)

    examples:
      shipyard tokens list
      shipyard tokens --file secrets/tokens.json list --revoked --json
    """
    infos = _store(args).list(revoked=args.revoked)
    if args.json:
        output.print_json(
            [
                {
                    "name": i.name,
                    "scopes": [str(s) for s in i.scopes],
                    "created": i.created.isoformat(),
                    "expires": i.expires.isoformat() if i.expires else None,
                    "expired": i.expired(),
                    "revoked_at": i.revoked_at.isoformat() if i.revoked_at else None,
                    "revoked_by": i.revoked_by,
                }
                for i in infos
            ]
        )
        return 0
    table = output.table("name", "scopes", "created", "expires")
    for i in infos:
        expires = "never" if i.expires is None else i.expires.isoformat(timespec="seconds")
        table.add_row(
            i.name,
            " ".join(str(s) for s in i.scopes),
            i.created.isoformat(timespec="seconds"),
            expires
            + (" (expired)" if i.expired() else "")
            + (f" (revoked by {i.revoked_by})" if i.revoked_at else ""),
        )
    output.show(table)
    return 0


def cmd_audit_rotate(args: argparse.Namespace) -> int:
    """move the log aside (LOG.<UTC time>) and continue its chain in a new LOG

    Then check the whole chain, rotated files first:
      shipyard audit verify audit.jsonl.2* audit.jsonl --key-file keys/audit.key

    example:
      shipyard audit rotate audit.jsonl --key-file keys/audit.key
    """
    from shipyard.security.audit_chain import rotate_log
    from shipyard.security.keys import load_audit_key

    aside = rotate_log(args.log, load_audit_key(args.key_file))
    if args.json:
        output.print_json({"rotated": str(aside), "log": str(args.log)})
    else:
        output.say(f"moved {args.log} to {aside}; the chain continues in {args.log}")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """exit 0 if intact, 1 with the first bad record

    Under `serve --workers N` each worker keeps its own chain (audit.worker1.jsonl, ...):
    name the log the server was given and every worker's chain is verified.

    examples:
      shipyard audit verify audit.jsonl --key-file keys/audit.key
      shipyard audit verify audit.jsonl --head saved-head.json --json
    """
    from shipyard.security.audit_chain import verify_files, verify_log
    from shipyard.security.keys import load_audit_key

    key = load_audit_key(args.key_file)
    head = _saved_head(args.head)
    if len(args.log) > 1:
        chain = verify_files(args.log, key, head=head)
        bad = chain.first_bad
        if args.json:
            output.print_json(
                {
                    "ok": chain.ok,
                    "records": chain.records,
                    "head": chain.head.to_dict(),
                    "file": str(chain.bad_file) if chain.bad_file else None,
                    "first_bad_seq": bad.first_bad_seq if bad else None,
                    "first_bad_line": bad.first_bad_line if bad else None,
                    "problem": bad.problem if bad else None,
                }
            )
        elif chain.ok:
            output.say(
                f"[green]intact[/] {len(args.log)} files: {chain.records} records, "
                f"head seq {chain.head.seq}"
            )
        elif bad is not None:
            output.note(
                f"[red]tampered[/] {chain.bad_file} line {bad.first_bad_line} "
                f"(seq {bad.first_bad_seq}): {bad.problem}"
            )
        return 0 if chain.ok else 1
    log = args.log[0]
    workers = _worker_chains(Path(log))
    if workers:
        return _verify_workers(workers, key, as_json=args.json)
    result = verify_log(log, key, head=head)
    if args.json:
        output.print_json(
            {
                "ok": result.ok,
                "records": result.records,
                "head": result.head.to_dict(),
                "first_bad_seq": result.first_bad_seq,
                "first_bad_line": result.first_bad_line,
                "problem": result.problem,
            }
        )
    elif result.ok:
        output.say(f"[green]intact[/] {log}: {result.records} records, head seq {result.head.seq}")
    else:
        output.note(
            f"[red]tampered[/] {log} line {result.first_bad_line} "
            f"(seq {result.first_bad_seq}): {result.problem}"
        )
    return 0 if result.ok else 1


def _worker_chains(log: Path) -> list[Path]:
    """`serve --workers N` writes one chain per worker beside the log it was given
    (audit.jsonl -> audit.worker1.jsonl, ...): those, when `log` itself is absent."""
    if log.exists():
        return []
    return sorted(
        log.parent.glob(f"{log.stem}.worker*{log.suffix}"),
        key=lambda p: int(re.sub(r"\D", "", p.stem.rsplit("worker", 1)[-1]) or 0),
    )


def _verify_workers(paths: list[Path], key: bytes, *, as_json: bool) -> int:
    """Each worker's chain on its own; exit 1 if any does not verify."""
    from shipyard.security.audit_chain import verify_log

    results = [(path, verify_log(path, key)) for path in paths]
    if as_json:
        output.print_json(
            {
                "ok": all(r.ok for _, r in results),
                "chains": [
                    {
                        "file": str(path),
                        "ok": r.ok,
                        "records": r.records,
                        "head": r.head.to_dict(),
                        "first_bad_line": r.first_bad_line,
                        "problem": r.problem,
                    }
                    for path, r in results
                ],
            }
        )
    for path, r in [] if as_json else results:
        if r.ok:
            output.say(f"[green]intact[/] {path}: {r.records} records, head seq {r.head.seq}")
        else:
            output.note(f"[red]tampered[/] {path} line {r.first_bad_line}: {r.problem}")
    return 0 if all(r.ok for _, r in results) else 1


def cmd_audit_head(args: argparse.Namespace) -> int:
    """print {seq, hash} of the last record, to save for later

    example:
      shipyard audit head audit.jsonl --key-file keys/audit.key > saved-head.json
    """
    from shipyard.security.audit_chain import verify_log
    from shipyard.security.keys import load_audit_key

    result = verify_log(args.log, load_audit_key(args.key_file))
    if not result.ok:
        output.note(f"[red]error:[/] {args.log} does not verify; not exporting a head")
        return 1
    output.print_json(result.head.to_dict())
    return 0


def _saved_head(path: Path | None) -> AuditHead | None:
    from shipyard.security.audit_chain import AuditHead

    if path is None:
        return None
    try:
        return AuditHead.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"{path}: not a saved audit head ({exc}); save one with `shipyard audit head LOG`"
        ) from exc


def _expiry(text: str | None) -> datetime | None:
    if text is None:
        return None
    match = _DURATION.match(text.strip())
    if match:
        return datetime.now(UTC) + timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(f"bad --expires {text!r}: use 30d, 12h, 90m, 2w or an ISO date") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)
