"""CLI for keys, signing, encryption, API tokens and the audit log (all printing is here)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from shipyard.errors import UsageError

# soft_wrap: one message per line, whatever the terminal width (errors are grepped and logged)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EXAMPLES = {
    "keys": "shipyard keys init --dir keys/",
    "sign": "shipyard sign models/iris/1 --key keys/signing.pem",
    "verify": "shipyard verify models/iris/1 --pub keys/signing.pub",
    "encrypt": "shipyard encrypt models/iris/1 --key-file keys/data.key",
    "tokens": "shipyard tokens create --name ci-bot --scope 'infer:iris' --scope 'metadata:*'",
    "audit": "shipyard audit verify audit.jsonl --key-file keys/audit.key",
}

AddParser = Callable[[Any, str, str], argparse.ArgumentParser]


def add_commands(sub: Any, add: AddParser) -> None:
    """Register keys, sign, verify, encrypt, tokens and audit on the main CLI's subparsers."""
    k = add(sub, "keys", "create keys, or rotate the key-encryption key of an encrypted package")
    ks = k.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    ki = ks.add_parser("init", help="write signing.pem/.pub, data.key and audit.key (0600)")
    ki.add_argument("--dir", type=Path, required=True, help="folder for the keys (created 0700)")
    ki.add_argument("--json", action="store_true", help="machine-readable output")
    kr = ks.add_parser("rewrap", help="re-wrap a package's data key under a new key-encryption key")
    _package_args(kr)
    kr.add_argument("--key-file", type=Path, help="current KEK file (default: $SHIPYARD_KEK)")
    kr.add_argument("--new-key-file", type=Path, required=True, help="new KEK file")
    kr.add_argument(
        "--remove-signature", action="store_true", help="drop model.sig (re-sign after)"
    )

    s = add(sub, "sign", "sign a package version (OpenSSF model-signing, key-based) → model.sig")
    _package_args(s)
    s.add_argument("--key", type=Path, required=True, help="EC private key (PEM)")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    v = add(sub, "verify", "verify a package's model.sig and every file against a public key")
    _package_args(v)
    v.add_argument("--pub", type=Path, required=True, help="EC public key (PEM)")
    v.add_argument("--json", action="store_true", help="machine-readable output")

    e = add(sub, "encrypt", "encrypt model.onnx → model.onnx.enc (AES-256-GCM); removes plaintext")
    _package_args(e)
    e.add_argument("--key-file", type=Path, help="key-encryption key file (default: $SHIPYARD_KEK)")
    e.add_argument(
        "--chunk-size", type=int, default=4 << 20, help="bytes per chunk (default 4 MiB)"
    )
    e.add_argument("--remove-signature", action="store_true", help="drop model.sig (re-sign after)")
    e.add_argument("--json", action="store_true", help="machine-readable output")

    t = add(sub, "tokens", "create, list and revoke API tokens (stored as hashes only)")
    t.add_argument(
        "--file",
        type=Path,
        default=None,
        help="token file (default: $SHIPYARD_TOKEN_FILE or tokens.json)",
    )
    ts = t.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    tc = ts.add_parser("create", help="create a token and print it once")
    tc.add_argument("--name", required=True)
    tc.add_argument(
        "--scope", action="append", required=True, help="ACTION:MODEL-PATTERN; repeatable"
    )
    tc.add_argument("--expires", help="lifetime (30d, 12h, 90m, 2w) or an ISO date/time")
    tc.add_argument("--json", action="store_true", help="machine-readable output")
    tl = ts.add_parser("list", help="list tokens (names, scopes, expiry; never secrets)")
    tl.add_argument("--json", action="store_true", help="machine-readable output")
    tl.add_argument("--revoked", action="store_true", help="also list revoked tokens")
    tr = ts.add_parser("revoke", help="revoke a token by name")
    tr.add_argument("name")
    for action in (tc, tl, tr):  # --file also after the action; SUPPRESS keeps the parent's value
        action.add_argument("--file", type=Path, default=argparse.SUPPRESS, help="token file")

    a = add(sub, "audit", "verify the audit log's HMAC chain, print its head, or rotate it")
    as_ = a.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    # -- audit rotate (issue #9, audit log hardening) --
    ar = as_.add_parser(
        "rotate",
        help="move the log aside (LOG.<UTC time>) and continue its chain in a new LOG",
        description="example: shipyard audit rotate audit.jsonl --key-file keys/audit.key; "
        "then: shipyard audit verify audit.jsonl.2* audit.jsonl",
    )
    ar.add_argument("log", type=Path)
    ar.add_argument("--key-file", type=Path, help="audit key file (default: $SHIPYARD_AUDIT_KEY)")
    ar.add_argument("--json", action="store_true", help="machine-readable output")
    for name, text in (
        ("verify", "exit 0 if intact, 1 with the first bad record"),
        ("head", "print {seq, hash} of the last record, to save for later"),
    ):
        ap = as_.add_parser(name, help=text)
        if name == "verify":  # rotated files, oldest first, then the current one: one chain
            ap.add_argument("log", type=Path, nargs="+", help="log files, oldest first")
        else:
            ap.add_argument("log", type=Path)
        ap.add_argument(
            "--key-file", type=Path, help="audit key file (default: $SHIPYARD_AUDIT_KEY)"
        )
        ap.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "verify":
            ap.add_argument(
                "--head", type=Path, help="a saved head (JSON) the log must still contain"
            )


def handlers() -> dict[str, Callable[[argparse.Namespace], int]]:
    return {
        "keys": cmd_keys,
        "sign": cmd_sign,
        "verify": cmd_verify,
        "encrypt": cmd_encrypt,
        "tokens": cmd_tokens,
        "audit": cmd_audit,
    }


def cmd_keys(args: argparse.Namespace) -> int:
    if args.keys_command == "init":
        from shipyard.security.keys import init_keys

        paths = init_keys(args.dir)
        files = {
            "signing_key": str(paths.signing_key),
            "public_key": str(paths.public_key),
            "data_key": str(paths.data_key),
            "audit_key": str(paths.audit_key),
        }
        if args.json:
            _json(files)
        else:
            out.print(f"[green]wrote[/] keys to {paths.directory} (mode 0600):")
            for label, path in files.items():
                out.print(f"  {label:12} {path}")
            err.print("keep signing.pem, data.key and audit.key secret; share only signing.pub")
        return 0
    from shipyard.security.encryption import rewrap
    from shipyard.security.keys import key_id, load_kek, read_secret

    new = read_secret(args.new_key_file)
    manifest = rewrap(
        _version_dir(args), load_kek(args.key_file), new, remove_signature=args.remove_signature
    )
    out.print(
        f"[green]rewrapped[/] {manifest.name} version {manifest.version}: key id {key_id(new)}"
    )
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from shipyard.security.fileio import check_private
    from shipyard.security.signing import sign_version

    check_private(args.key, what="private key")  # a key others can read is already leaked
    sig = sign_version(_version_dir(args), args.key)
    if args.json:
        _json({"signature": str(sig)})
    else:
        out.print(f"[green]signed[/] → {sig}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from shipyard.security.errors import SignatureError
    from shipyard.security.signing import verify_version

    version_dir = _version_dir(args)
    try:
        result = verify_version(version_dir, args.pub)
    except SignatureError as exc:
        if args.json:
            _json({"ok": False, "error": exc.message, "files": list(exc.files)})
        else:
            err.print(f"[red]error:[/] {exc.message}")
        return 1
    if args.json:
        _json({"ok": True, "signature": str(result.signature), "files": list(result.files)})
    else:
        count = len(result.files)
        out.print(f"[green]verified[/] {version_dir}: {count} files match {result.signature.name}")
    return 0


def cmd_encrypt(args: argparse.Namespace) -> int:
    from shipyard.security.encryption import encrypt_version
    from shipyard.security.keys import load_kek

    manifest = encrypt_version(
        _version_dir(args),
        load_kek(args.key_file),
        chunk_size=args.chunk_size,
        remove_signature=args.remove_signature,
    )
    info = manifest.encryption
    assert info is not None
    if args.json:
        _json({"name": manifest.name, "version": manifest.version, **info.model_dump(mode="json")})
    else:
        out.print(
            f"[green]encrypted[/] {manifest.name} version {manifest.version} → {info.file} "
            f"({info.chunk_count} chunk{'s' if info.chunk_count != 1 else ''}, "
            f"key id {info.kek_id}); plaintext removed"
        )
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    from shipyard.security.tokens import TOKEN_FILE_ENV, TokenStore

    store = TokenStore(args.file or Path(os.environ.get(TOKEN_FILE_ENV, "tokens.json")))
    if args.tokens_command == "create":
        token = store.create(args.name, args.scope, expires=_expiry(args.expires))
        if args.json:
            _json({"name": args.name, "token": token})
        else:
            sys.stdout.write(token + "\n")
            err.print("this token is shown only once; store it now")
        return 0
    if args.tokens_command == "revoke":
        info = store.revoke(args.name)
        when = info.revoked_at.isoformat(timespec="seconds") if info.revoked_at else "?"
        out.print(
            f"[green]revoked[/] {args.name} (recorded in {store.path}: revoked_at {when}, "
            f"revoked_by {info.revoked_by}; a server with an audit log records it on its next "
            "read of the file)"
        )
        return 0
    infos = store.list(revoked=args.revoked)
    if args.json:
        _json(
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
    table = Table("name", "scopes", "created", "expires")
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
    out.print(table)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from shipyard.security.audit_chain import AuditHead, rotate_log, verify_files, verify_log
    from shipyard.security.keys import load_audit_key

    key = load_audit_key(args.key_file)
    if args.audit_command == "rotate":
        aside = rotate_log(args.log, key)
        if args.json:
            _json({"rotated": str(aside), "log": str(args.log)})
        else:
            out.print(f"moved {args.log} to {aside}; the chain continues in {args.log}")
        return 0
    head = None
    if args.audit_command == "verify" and args.head is not None:
        head = AuditHead.from_dict(json.loads(args.head.read_text(encoding="utf-8")))
    if args.audit_command == "verify" and len(args.log) > 1:
        chain = verify_files(args.log, key, head=head)
        bad = chain.first_bad
        if args.json:
            _json(
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
            out.print(
                f"[green]intact[/] {len(args.log)} files: {chain.records} records, "
                f"head seq {chain.head.seq}"
            )
        elif bad is not None:
            err.print(
                f"[red]tampered[/] {chain.bad_file} line {bad.first_bad_line} "
                f"(seq {bad.first_bad_seq}): {bad.problem}"
            )
        return 0 if chain.ok else 1
    if args.audit_command == "verify":
        args.log = args.log[0]
    result = verify_log(args.log, key, head=head)
    if args.audit_command == "head":
        if not result.ok:
            err.print(f"[red]error:[/] {args.log} does not verify; not exporting a head")
            return 1
        _json(result.head.to_dict())
        return 0
    if args.json:
        _json(
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
        out.print(
            f"[green]intact[/] {args.log}: {result.records} records, head seq {result.head.seq}"
        )
    else:
        err.print(
            f"[red]tampered[/] {args.log} line {result.first_bad_line} "
            f"(seq {result.first_bad_seq}): {result.problem}"
        )
    return 0 if result.ok else 1


def _package_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="model folder (latest version) or version folder")
    parser.add_argument(
        "--version", type=int, dest="model_version", help="version (default: latest)"
    )


def _version_dir(args: argparse.Namespace) -> Path:
    from shipyard.package.store import resolve_version_dir

    return resolve_version_dir(args.path, args.model_version)


_DURATION = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


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


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
