"""Key, signing and encryption commands: keys init/rewrap, sign, verify, encrypt."""

from __future__ import annotations

import argparse
from pathlib import Path

from shipyard.cli import output
from shipyard.cli.parsing import Subparsers, add_command, add_group


def register(sub: Subparsers) -> None:
    _, actions = add_group(
        sub, "keys", "create keys, or rotate the key-encryption key of an encrypted package"
    )
    ki = add_command(actions, "init", cmd_keys_init)
    ki.add_argument("--dir", type=Path, required=True, help="folder for the keys (created 0700)")
    ki.add_argument("--json", action="store_true", help="machine-readable output")
    kr = add_command(actions, "rewrap", cmd_keys_rewrap)
    package_args(kr)
    kr.add_argument("--key-file", type=Path, help="current KEK file (default: $SHIPYARD_KEK)")
    kr.add_argument("--new-key-file", type=Path, required=True, help="new KEK file")
    kr.add_argument(
        "--remove-signature", action="store_true", help="drop model.sig (re-sign after)"
    )

    s = add_command(sub, "sign", cmd_sign)
    package_args(s)
    s.add_argument("--key", type=Path, required=True, help="EC private key (PEM)")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    v = add_command(sub, "verify", cmd_verify)
    package_args(v)
    v.add_argument("--pub", type=Path, required=True, help="EC public key (PEM)")
    v.add_argument("--json", action="store_true", help="machine-readable output")

    e = add_command(sub, "encrypt", cmd_encrypt)
    package_args(e)
    e.add_argument("--key-file", type=Path, help="key-encryption key file (default: $SHIPYARD_KEK)")
    e.add_argument(
        "--chunk-size", type=int, default=4 << 20, help="bytes per chunk (default 4 MiB)"
    )
    e.add_argument("--remove-signature", action="store_true", help="drop model.sig (re-sign after)")
    e.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_keys_init(args: argparse.Namespace) -> int:
    """write signing.pem/.pub, data.key and audit.key (0600)

    examples:
      shipyard keys init --dir keys/
      shipyard keys init --dir keys/ --json
    """
    from shipyard.security.keys import init_keys

    paths = init_keys(args.dir)
    files = {
        "signing_key": str(paths.signing_key),
        "public_key": str(paths.public_key),
        "data_key": str(paths.data_key),
        "audit_key": str(paths.audit_key),
    }
    if args.json:
        output.print_json(files)
        return 0
    output.say(f"[green]wrote[/] keys to {paths.directory} (mode 0600):")
    for label, path in files.items():
        output.say(f"  {label:12} {path}")
    output.note("keep signing.pem, data.key and audit.key secret; share only signing.pub")
    return 0


def cmd_keys_rewrap(args: argparse.Namespace) -> int:
    """re-wrap a package's data key under a new key-encryption key

    example:
      shipyard keys rewrap models/iris/1 --key-file keys/data.key --new-key-file keys/new.key
    """
    from shipyard.security.encryption import rewrap
    from shipyard.security.keys import key_id, load_kek, read_secret

    new = read_secret(args.new_key_file)
    manifest = rewrap(
        chosen_version(args), load_kek(args.key_file), new, remove_signature=args.remove_signature
    )
    output.say(
        f"[green]rewrapped[/] {manifest.name} version {manifest.version}: key id {key_id(new)}"
    )
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    """sign a package version (OpenSSF model-signing, key-based) → model.sig

    example:
      shipyard sign models/iris/1 --key keys/signing.pem
    """
    from shipyard.security.fileio import check_private
    from shipyard.security.signing import sign_version

    check_private(args.key, what="private key")  # a key others can read is already leaked
    sig = sign_version(chosen_version(args), args.key)
    if args.json:
        output.print_json({"signature": str(sig)})
    else:
        output.say(f"[green]signed[/] → {sig}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """verify a package's model.sig and every file against a public key

    examples:
      shipyard verify models/iris/1 --pub keys/signing.pub
      shipyard verify models/iris --version 2 --pub keys/signing.pub --json
    """
    from shipyard.security.errors import SignatureError
    from shipyard.security.signing import verify_version

    version_dir = chosen_version(args)
    try:
        result = verify_version(version_dir, args.pub)
    except SignatureError as exc:
        if args.json:
            output.print_json({"ok": False, "error": exc.message, "files": list(exc.files)})
        else:
            output.note(f"[red]error:[/] {exc.message}")
        return 1
    if args.json:
        output.print_json(
            {"ok": True, "signature": str(result.signature), "files": list(result.files)}
        )
    else:
        count = len(result.files)
        output.say(f"[green]verified[/] {version_dir}: {count} files match {result.signature.name}")
    return 0


def cmd_encrypt(args: argparse.Namespace) -> int:
    """encrypt model.onnx → model.onnx.enc (AES-256-GCM); removes plaintext

    examples:
      shipyard encrypt models/iris/1 --key-file keys/data.key
      shipyard encrypt models/iris/2 --key-file keys/data.key --remove-signature
    """
    from shipyard.security.encryption import encrypt_version
    from shipyard.security.keys import load_kek

    manifest = encrypt_version(
        chosen_version(args),
        load_kek(args.key_file),
        chunk_size=args.chunk_size,
        remove_signature=args.remove_signature,
    )
    info = manifest.encryption
    assert info is not None
    if args.json:
        output.print_json(
            {"name": manifest.name, "version": manifest.version, **info.model_dump(mode="json")}
        )
    else:
        output.say(
            f"[green]encrypted[/] {manifest.name} version {manifest.version} → {info.file} "
            f"({info.chunk_count} chunk{'s' if info.chunk_count != 1 else ''}, "
            f"key id {info.kek_id}); plaintext removed"
        )
    return 0


def package_args(parser: argparse.ArgumentParser) -> None:
    """PATH [--version N]: the version a command works on."""
    parser.add_argument("path", type=Path, help="model folder (latest version) or version folder")
    parser.add_argument(
        "--version", type=int, dest="model_version", help="version (default: latest)"
    )


def chosen_version(args: argparse.Namespace) -> Path:
    from shipyard.package.store import resolve_version_dir

    return resolve_version_dir(args.path, args.model_version)
