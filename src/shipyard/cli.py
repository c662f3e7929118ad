"""Command line: parses arguments and calls library functions; all printing happens here."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shipyard.errors import ShipyardError
from shipyard.processing.cli import add_pack_arguments as add_processing_arguments

EXAMPLES = {
    "pack": "shipyard pack clf.skops --name iris --repo models/",
    "scan": "shipyard scan clf.joblib",
    "inspect": "shipyard inspect models/iris",
    "predict": "shipyard predict models/iris --input request.json",
    "import": "shipyard import other-repo/iris/1 --repo models/ --name iris-eu --version 3",
    "serve": "shipyard serve models/ --host 127.0.0.1 --port 8000",
    "demo": "shipyard demo --repo models/ --serve",
}


def _add(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    from shipyard.analysis import cli as analysis_cli
    from shipyard.compression import cli as compress_cli
    from shipyard.monitoring import cli as monitoring_cli
    from shipyard.security import cli as security_cli
    from shipyard.serving import drift_cli

    EXAMPLES.update(analysis_cli.EXAMPLES)
    EXAMPLES.update(compress_cli.EXAMPLES)
    EXAMPLES.update(drift_cli.EXAMPLES)
    EXAMPLES.update(monitoring_cli.EXAMPLES)
    EXAMPLES.update(security_cli.EXAMPLES)
    parser = argparse.ArgumentParser(
        prog="shipyard",
        description="Package, compress and serve trained models on ONNX Runtime.",
        epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of errors (also: SHIPYARD_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _add(sub, "pack", "convert a model to ONNX, check it against the original, write a version")
    p.add_argument("model", help="model file: .onnx .pt2 .pt .keras .h5 .skops .joblib .pkl")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--repo", required=True, type=Path, help="repository folder")
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
    add_processing_arguments(p)
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

    s = _add(sub, "scan", "scan a pickle/joblib/torch file opcode by opcode, without loading it")
    s.add_argument("file", type=Path)
    s.add_argument("--allow-global", action="append", default=[], metavar="MODULE.NAME")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    i = _add(sub, "inspect", "show a package's manifest: signature, files, hashes, lineage")
    i.add_argument("path", type=Path, help="model folder (latest version) or version folder")
    i.add_argument("--version", type=int, dest="model_version")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.add_argument(
        "--pub",
        type=Path,
        metavar="KEY",
        help="also verify the signature (model.sig) with this public key; exit 1 if it fails",
    )
    i.add_argument(
        "--example",
        action="store_true",
        help="print a ready-to-send V2 inference request built from the stored sample "
        "(e.g. shipyard inspect models/iris --example | curl -d @- .../v2/models/iris/infer)",
    )

    r = _add(sub, "predict", "run local inference: V2 inference JSON in, V2 JSON out")
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

    m = _add(
        sub,
        "import",
        "copy a package version into a repository under a new number and/or name",
    )
    m.description = (
        "copy a package version into a repository under a new number and/or name\n\n"
        "Every file is verified, the manifest is re-sealed with the new name and version, and\n"
        "the import is recorded in its lineage. A signature (model.sig) covers the old\n"
        "manifest and is not copied: re-sign the copy with `shipyard sign`. An encrypted\n"
        "package cannot change name or version (its key is bound to them): import the\n"
        "plaintext package and encrypt the copy."
    )
    m.add_argument(
        "package", type=Path, metavar="PACKAGE_DIR", help="version folder (model folder: latest)"
    )
    m.add_argument("--repo", required=True, type=Path, help="repository folder to copy into")
    m.add_argument("--name", help="model name in --repo (default: the package's own name)")
    m.add_argument(
        "--version",
        type=int,
        dest="model_version",
        metavar="N",
        help="version (default: next free)",
    )
    m.add_argument("--json", action="store_true", help="machine-readable output")

    from shipyard.cli_serve import add_serve_commands
    from shipyard.security import cli as security_cli

    add_serve_commands(sub, _add)
    compress_cli.add_commands(sub, _add)
    security_cli.add_commands(sub, _add)
    monitoring_cli.add_commands(sub, _add)
    drift_cli.add_commands(sub, _add)
    analysis_cli.add_commands(sub, _add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from shipyard import __version__

        print(f"shipyard {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return 2
    handler: Callable[[argparse.Namespace], int] = _handlers()[args.command]
    debug = args.debug or os.environ.get("SHIPYARD_DEBUG", "") not in ("", "0")
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        code = exit_code(exc)
        if debug or code is None:
            raise  # a bug, or asked for: the traceback says where
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return code


def exit_code(exc: BaseException) -> int | None:
    """1 = the operation failed, 2 = usage error; None for an unexpected exception (a bug).

    A ShipyardError may set `exit_code = 2` (wrong arguments); pydantic validation errors
    mean a value given was not acceptable; OSErrors (permissions, disk full) are failures.
    """
    from pydantic import ValidationError

    if isinstance(exc, ShipyardError):
        code = getattr(exc, "exit_code", 1)
        return code if isinstance(code, int) else 1
    if isinstance(exc, ValidationError):
        return 2
    if isinstance(exc, OSError):
        return 1
    return None


def error_line(exc: BaseException) -> str:
    """One line that says what went wrong and, where it can, what to do."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()[:3]
        )
        text = f"invalid {exc.title} ({details}); fix the value given (--debug: traceback)"
    elif isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        reason = exc.strerror or str(exc) or type(exc).__name__
        text = (
            f"{where}{reason}; check the path, its permissions and free disk space "
            "(--debug: traceback)"
        )
    else:
        text = str(exc)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _handlers() -> dict[str, Callable[[argparse.Namespace], int]]:
    from shipyard import cli_commands as c
    from shipyard.analysis import cli as analysis_cli
    from shipyard.cli_serve import serve_handlers
    from shipyard.compression import cli as compress_cli
    from shipyard.monitoring import cli as monitoring_cli
    from shipyard.security import cli as security_cli
    from shipyard.serving import drift_cli

    return {
        **analysis_cli.handlers(),
        **compress_cli.handlers(),
        **drift_cli.handlers(),
        **monitoring_cli.handlers(),
        **security_cli.handlers(),
        "pack": c.cmd_pack,
        "scan": c.cmd_scan,
        "inspect": c.cmd_inspect,
        "predict": c.cmd_predict,
        "import": c.cmd_import,
        **serve_handlers(),
    }


def dump_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


if __name__ == "__main__":
    sys.exit(main())
