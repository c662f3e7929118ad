"""Packaging commands: pack, scan, inspect, predict, import."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shipyard.cli import inspect, output, processing
from shipyard.cli.parsing import Subparsers, add_command


def register(sub: Subparsers) -> None:
    _add_pack(sub)
    s = add_command(sub, "scan", cmd_scan)
    s.add_argument("file", type=Path)
    s.add_argument("--allow-global", action="append", default=[], metavar="MODULE.NAME")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.register(sub)
    _add_predict(sub)
    _add_import(sub)
    u = add_command(sub, "push", cmd_push)
    u.add_argument("package", type=Path, metavar="VERSION_DIR", help="version folder to upload")
    u.add_argument("--repo", required=True, help="s3://bucket/prefix")


def _add_pack(sub: Subparsers) -> None:
    p = add_command(sub, "pack", cmd_pack)
    p.add_argument("model", help="model file: .onnx .pt2 .pt .keras .h5 .skops .joblib .pkl")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument(
        "--repo", required=True, type=_repo, help="repository folder or s3://bucket/prefix"
    )
    p.add_argument("--version", type=int, dest="model_version", help="version (default: next free)")
    p.add_argument("--sample-input", type=Path, help="sample inputs as .npy or .npz (no pickle)")
    p.add_argument(
        "--no-sample",
        action="store_true",
        help="do not keep the sample in the version (samples/warmup.npz); the server then "
        "warms up on synthesized inputs",
    )
    p.add_argument(
        "--reference-data",
        type=Path,
        metavar="FILE",
        help="profile these inputs (.npz/.npy/.csv/.parquet) for drift: profile/reference.json",
    )
    processing.add_pack_arguments(p)
    p.add_argument("--opset", type=int, help="target ONNX opset (default: the importer's choice)")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (default 1e-3)")
    p.add_argument(
        "--max-mismatch", type=float, default=0.0, help="allowed fraction of differing labels"
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow pickle/joblib input: it is scanned and loaded only if every global is allowed",
    )
    p.add_argument(
        "--allow-global",
        action="append",
        default=[],
        metavar="MODULE.NAME",
        help="add a reviewed global (e.g. your own class) to the pickle allowlist; repeatable",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _add_predict(sub: Subparsers) -> None:
    r = add_command(sub, "predict", cmd_predict)
    r.add_argument("path", type=Path, help="model folder or version folder")
    r.add_argument(
        "--input", required=True, type=Path, help="V2 inference request JSON ('-' = stdin)"
    )
    r.add_argument("--version", type=int, dest="model_version")
    r.add_argument(
        "--pub", type=Path, metavar="KEY", help="require a valid signature by this public key"
    )
    r.add_argument(
        "--key-file",
        type=Path,
        metavar="KEY",
        help="key-encryption key for an encrypted package (default: $SHIPYARD_KEK)",
    )


def _add_import(sub: Subparsers) -> None:
    m = add_command(sub, "import", cmd_import)
    m.add_argument(
        "package", type=Path, metavar="PACKAGE_DIR", help="version folder (model folder: latest)"
    )
    m.add_argument(
        "--repo", required=True, type=_repo, help="repository folder or s3://bucket/prefix"
    )
    m.add_argument("--name", help="model name in --repo (default: the package's own name)")
    m.add_argument(
        "--version",
        type=int,
        dest="model_version",
        metavar="N",
        help="version (default: next free)",
    )
    m.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_pack(args: argparse.Namespace) -> int:
    """convert a model to ONNX, check it against the original, write a version

    examples:
      shipyard pack clf.skops --name iris --repo models/
      shipyard pack model.pt2 --name minilm --repo models/ --sample-input sample.npz
      shipyard pack clf.skops --name iris --repo s3://bucket/models
    """
    import shipyard
    from shipyard.package.conversion import Tolerance

    tolerance = Tolerance(atol=args.atol, rtol=args.rtol, max_mismatch=args.max_mismatch)
    with (
        _staged(args.repo, args.name, args.model_version) as (repo, version, publish),
        output.status(f"converting {args.model} and checking it against the original…"),
    ):
        result = shipyard.pack(
            args.model,
            name=args.name,
            repo=repo,
            version=version,
            sample_input=args.sample_input,
            keep_sample=not args.no_sample,
            reference_data=args.reference_data,
            processing=processing.plan_from_args(args),
            opset=args.opset,
            tolerance=tolerance,
            trust_pickle=args.trust_pickle,
            allow_globals=args.allow_global,
        )
        where = publish(result.path, result.manifest.name, result.manifest.version)
    if args.json:
        output.print_json({"path": where, "manifest": result.manifest.model_dump(mode="json")})
        return 0
    m = result.manifest
    check = m.conversion_check
    if check is None:
        diff = "not checked"
    elif check.compared_outputs:
        diff = f"max abs diff {check.max_abs_diff:.3g}"
    else:
        diff = "not compared: no original, trial run passed"
    output.say(
        f"[green]packed[/] {m.name} version {m.version} → {where}  "
        f"({m.source.framework} {m.source.framework_version}, opset {m.opset}, {diff})"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """copy a package version into a repository under a new number and/or name

    Every file is verified, the manifest is re-sealed with the new name and version, and
    the import is recorded in its lineage. A signature (model.sig) covers the old
    manifest and is not copied: re-sign the copy with `shipyard sign`. An encrypted
    package cannot change name or version (its key is bound to them): import the
    plaintext package and encrypt the copy.

    example:
      shipyard import other-repo/iris/1 --repo models/ --name iris-eu --version 3
      shipyard import other-repo/iris/1 --repo s3://bucket/models
    """
    from shipyard.api import import_version
    from shipyard.package.store import read_verified, resolve_version_dir

    name, wanted = args.name, args.model_version
    if isinstance(args.repo, str):  # the bucket's next number needs the name
        source = read_verified(resolve_version_dir(args.package), check_folder=False)
        name = name or source.name
        if wanted is None and source.encryption is not None:
            wanted = source.version  # the only number its key allows
    with _staged(args.repo, name, wanted) as (repo, version, publish):
        result = import_version(args.package, repo=repo, name=args.name, version=version)
        where = publish(result.path, result.manifest.name, result.manifest.version)
    m = result.manifest
    if args.json:
        output.print_json(
            {
                "path": where,
                "source": str(result.source),
                "resign_needed": result.signature_dropped,
                "next_steps": list(result.next_steps),
                "manifest": m.model_dump(mode="json"),
            }
        )
        return 0
    output.say(f"[green]imported[/] {result.source} → {m.name} version {m.version} at {where}")
    for step in result.next_steps:
        output.note(f"[yellow]note:[/] {step}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """upload a version to an s3:// repository byte for byte, signature included

    The version is verified first and keeps its name and number (`shipyard import` renames
    or renumbers, and re-seals, which drops a signature). Files go up first, manifest.json
    last, so a server syncing the bucket never takes half of it.

    example:
      shipyard sign models/iris/3 --key signer.pem && shipyard push models/iris/3 --repo s3://b/models
    """
    from shipyard.errors import UsageError
    from shipyard.package.remote import is_remote, push_version

    if not is_remote(args.repo):
        raise UsageError(f"{args.repo}: push uploads to an s3:// repository (locally: import)")
    output.say(f"[green]pushed[/] {args.package} → {push_version(args.package, args.repo)}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    """scan a pickle/joblib/torch file opcode by opcode, without loading it

    examples:
      shipyard scan clf.joblib
      shipyard scan model.pt --allow-global mylib.Net
    """
    from shipyard.safepickle.scan import scan_file

    report = scan_file(args.file, extra_allowed=args.allow_global)
    if args.json:
        output.print_json(
            {
                "path": report.path,
                "format": report.format,
                "safe": report.safe,
                "pickles": report.pickles,
                "globals": list(report.globals),
                "findings": [
                    {
                        "position": f.position,
                        "opcode": f.opcode,
                        "global": f.global_name,
                        "reason": f.reason,
                        "member": f.member,
                    }
                    for f in report.findings
                ],
            }
        )
        return 0 if report.safe else 1
    verdict = "[green]clean[/]" if report.safe else "[red]UNSAFE[/]"
    output.say(
        f"{report.path}: {verdict} — format {report.format}, {report.pickles} pickle(s), "
        f"{len(report.globals)} distinct global(s)"
    )
    if report.findings:
        table = output.table("position", "member", "opcode", "global", "reason")
        for f in report.findings:
            table.add_row(str(f.position), f.member or "", f.opcode, f.global_name or "", f.reason)
        output.show(table)
    return 0 if report.safe else 1


def cmd_predict(args: argparse.Namespace) -> int:
    """run local inference: V2 inference JSON in, V2 JSON out

    examples:
      shipyard predict models/iris --input request.json
      shipyard inspect models/iris --example | shipyard predict models/iris --input -
    """
    import shipyard
    from shipyard.predict import predict_json

    raw = sys.stdin.buffer.read() if str(args.input) == "-" else _read(args.input)
    kek = None
    if args.key_file is not None:
        from shipyard.security.keys import load_kek

        kek = load_kek(args.key_file)
    model = shipyard.load(args.path, version=args.model_version, public_key=args.pub, kek=kek)
    try:
        response: dict[str, Any] = predict_json(model, raw)
    finally:
        model.close()
    output.print_json(response)
    return 0


def _repo(value: str) -> Path | str:
    """A repository folder as a Path; an s3:// URL kept as it is."""
    from shipyard.package.remote import repository_location

    location: Path | str = repository_location(value)
    return location


Publish = Callable[[Path, str, int], str]


@contextlib.contextmanager
def _staged(
    repo: Path | str, name: str | None, version: int | None
) -> Iterator[tuple[Path, int | None, Publish]]:
    """(folder to write into, version to write, publish(version_dir, name, version) -> where).

    A local repository is written in place. For an s3:// one the version is written into a
    temporary local repository under the bucket's next free number (unless given), then
    uploaded, files first and manifest.json last (`package.remote.upload_version`).
    """
    if not isinstance(repo, str):
        yield repo, version, lambda path, _name, _version: str(path)
        return
    import tempfile

    from shipyard.errors import UsageError
    from shipyard.package.remote import RemoteRepository, next_remote_version, upload_version
    from shipyard.package.store import check_name

    remote = RemoteRepository(repo)
    remote.check()
    if version is None:
        version = next_remote_version(remote, check_name(name or ""))
    elif version in remote.versions(check_name(name or "")):  # before the work, not after it
        raise UsageError(f"{repo}/{name}/{version}: version {version} already exists")

    def publish(path: Path, name: str, number: int) -> str:
        return upload_version(remote, path, name, number)

    with tempfile.TemporaryDirectory(prefix="shipyard-upload-") as tmp:
        yield Path(tmp), version, publish


def _read(path: Path) -> bytes:
    from shipyard.errors import UsageError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read request file ({exc.strerror})") from exc
