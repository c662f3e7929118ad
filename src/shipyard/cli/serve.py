"""Commands that run a server: `shipyard serve` a repository, `shipyard demo`."""

from __future__ import annotations

import argparse
import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from shipyard.cli import output
from shipyard.cli.parsing import Subparsers, add_command


def register(sub: Subparsers) -> None:
    s = add_command(sub, "serve", cmd_serve)
    s.add_argument(
        "repository",
        type=repository_arg,
        nargs="?",
        help="repository folder (default: models) or s3://bucket/prefix",
    )
    serve_flags(s)
    _workers_flag(s)

    d = add_command(sub, "demo", cmd_demo)
    d.add_argument("--repo", type=Path, default=Path("models"), help="repository to fill")
    d.add_argument("--no-text", action="store_true", help="skip the MiniLM sentence model")
    d.add_argument("--once", action="store_true", help="send the demo requests, then stop")
    d.add_argument("--no-serve", action="store_true", help="only build the repository")
    _server_flags(d)


def serve_flags(parser: argparse.ArgumentParser) -> None:
    """Every flag of `shipyard serve` but --workers (also `shipyard deploy ray`'s)."""
    _server_flags(parser)
    _security_flags(parser)
    _http_flags(parser)
    _tls_flags(parser)
    _shutdown_flags(parser)


def _server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000; 0 = any free port)")
    parser.add_argument(
        "--grpc-port", type=int, help="also serve V2 over gRPC on this port (e.g. 8001; 0 = any)"
    )
    parser.add_argument("--config", type=Path, help="server settings TOML file")
    parser.add_argument("--log-format", choices=["text", "json"], help="log lines as text or JSON")
    parser.add_argument("--max-batch-size", type=int, help="default dynamic batching limit")
    parser.add_argument("--max-queue-delay-us", type=int, help="default batching delay (µs)")
    parser.add_argument("--poll-interval", type=float, help="seconds between hot-reload scans")
    parser.add_argument(
        "--repository-cache",
        type=Path,
        metavar="DIR",
        help="where an s3:// repository is mirrored (default ~/.cache/shipyard/remote)",
    )
    parser.add_argument(
        "--drift",
        action="store_true",
        default=None,
        help="measure drift against each version's reference profile (shipyard_drift_*)",
    )


def _security_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("security")
    g.add_argument(
        "--auth", type=Path, metavar="TOKENS", help="token file: every route needs a token"
    )
    g.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a non-loopback --host without --auth",
    )
    g.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this certificate")
    g.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    g.add_argument(
        "--require-signature",
        action="store_true",
        default=None,
        help="refuse versions without a valid signature (needs --pub)",
    )
    g.add_argument("--pub", type=Path, metavar="KEY", help="public key signatures must verify with")
    g.add_argument(
        "--key-file", type=Path, metavar="KEY", help="key-encryption key (default: $SHIPYARD_KEK)"
    )
    g.add_argument("--audit-log", type=Path, metavar="FILE", help="append audit records here")
    g.add_argument(
        "--audit-key-file",
        type=Path,
        metavar="KEY",
        help="audit log HMAC key (default: $SHIPYARD_AUDIT_KEY)",
    )
    g.add_argument(
        "--audit-new-chain",
        action="store_true",
        default=None,
        help="when the audit chain does not verify at start, move the log aside and start anew",
    )
    g.add_argument(
        "--allow-downgrade",
        action="store_true",
        default=None,
        help="with --require-signature, serve a version older than one already served",
    )
    g.add_argument(
        "--max-instances", type=int, metavar="N", help="most instances a model.toml may ask for"
    )


def _http_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("HTTP connection bounds (before auth)")
    g.add_argument(
        "--max-header-bytes", type=int, metavar="N", help="request line + headers (default 16384)"
    )
    g.add_argument("--max-header-fields", type=int, metavar="N", help="header fields (default 100)")
    g.add_argument(
        "--header-timeout", type=float, metavar="S", help="seconds to send all headers (default 10)"
    )
    g.add_argument(
        "--body-timeout",
        type=float,
        metavar="S",
        help="seconds a request body may stall (default 30)",
    )
    g.add_argument(
        "--keep-alive-timeout", type=float, metavar="S", help="idle keep-alive seconds (default 5)"
    )
    g.add_argument(
        "--max-connections", type=int, metavar="N", help="open HTTP connections (default 1024)"
    )


_HTTP_SETTINGS = (
    ("max_header_bytes", "max_header_bytes"),
    ("max_header_fields", "max_header_fields"),
    ("header_timeout", "header_timeout_s"),
    ("body_timeout", "body_timeout_s"),
    ("keep_alive_timeout", "keep_alive_timeout_s"),
    ("max_connections", "max_connections"),
)


def _tls_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("TLS (with --tls-cert/--tls-key; HTTPS and gRPC)")
    g.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PEM",
        help="mutual TLS: require a client certificate signed by this CA bundle",
    )
    g.add_argument(
        "--tls-min-version", choices=["1.2", "1.3"], help="oldest TLS version (default 1.2)"
    )
    g.add_argument(
        "--tls-ciphers", metavar="LIST", help="OpenSSL TLS 1.2 cipher list (default: OpenSSL's)"
    )
    g.add_argument(
        "--tls-reload-interval",
        type=float,
        metavar="S",
        help="seconds between checks for new certificate files (default 5; 0 = never)",
    )


def _workers_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="server processes on one port (SO_REUSEPORT: the kernel spreads connections); "
        "one /metrics sums them (default 1)",
    )


def _shutdown_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "shutting down",
        "SIGTERM or SIGINT: readiness answers 503 at once (liveness stays 200), requests\n"
        "are answered for the delay, then the listeners close and in-flight requests\n"
        "finish; a second signal exits at once",
    )
    g.add_argument(
        "--shutdown-delay",
        type=float,
        metavar="S",
        help="seconds requests are still answered before the listeners close (default 0; "
        "5 in Kubernetes)",
    )
    g.add_argument(
        "--drain-timeout",
        type=float,
        metavar="S",
        help="seconds in-flight requests then get to finish before exit 0 (default 25)",
    )


_TLS_SETTINGS = (
    ("tls_client_ca", "client_ca"),
    ("tls_min_version", "min_version"),
    ("tls_ciphers", "ciphers"),
    ("tls_reload_interval", "reload_interval_s"),
)


_SECURITY_SETTINGS = (
    ("auth", "auth"),
    ("insecure", "insecure"),
    ("tls_cert", "tls_cert"),
    ("tls_key", "tls_key"),
    ("require_signature", "require_signature"),
    ("pub", "public_key"),
    ("key_file", "key_file"),
    ("audit_log", "audit_log"),
    ("audit_key_file", "audit_key_file"),
    ("audit_new_chain", "audit_new_chain"),
    ("allow_downgrade", "allow_downgrade"),
    ("max_instances", "max_instances"),
)


def repository_arg(value: str) -> Path | str:
    """A folder as a Path; an s3:// URL kept as it is (a Path would fold its `//`)."""
    from shipyard.package.remote import repository_location

    location: Path | str = repository_location(value)
    return location


def settings_from(args: argparse.Namespace, repository: Path | str | None) -> Any:
    from shipyard.serving.settings import load_settings

    overrides: dict[str, Any] = {}
    for flag, key in (
        ("host", "host"),
        ("port", "port"),
        ("grpc_port", "grpc_port"),
        ("log_format", "log_format"),
        ("poll_interval", "poll_interval_s"),
        ("repository_cache", "repository_cache"),
        ("shutdown_delay", "shutdown_delay_s"),
        ("drain_timeout", "drain_timeout_s"),
        ("workers", "workers"),
        *_SECURITY_SETTINGS,
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if repository is not None:
        overrides["repository"] = repository
    tls = {k: getattr(args, f) for f, k in _TLS_SETTINGS if getattr(args, f, None) is not None}
    if tls:
        overrides["tls"] = tls
    settings = load_settings(config_file=args.config, **overrides)
    if getattr(args, "drift", None):
        settings = settings.model_copy(
            update={"drift": settings.drift.model_copy(update={"enabled": True})}
        )
    batching: dict[str, Any] = {}
    if args.max_batch_size is not None:
        batching["max_batch_size"] = args.max_batch_size
    if args.max_queue_delay_us is not None:
        batching["max_queue_delay_us"] = args.max_queue_delay_us
    if batching:
        merged = settings.batching.model_copy(update=batching)
        settings = settings.model_copy(update={"batching": merged})
    http = {
        key: getattr(args, flag)
        for flag, key in _HTTP_SETTINGS
        if getattr(args, flag, None) is not None
    }
    if http:  # validated: model_copy alone would skip the field bounds
        merged_http = type(settings.http).model_validate({**settings.http.model_dump(), **http})
        settings = settings.model_copy(update={"http": merged_http})
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    """serve a model repository: KServe V2 REST and gRPC, TF Serving REST, metrics, hot reload

    examples:
      shipyard serve models/ --host 127.0.0.1 --port 8000
      shipyard serve models/ --grpc-port 8001 --log-format json --drift
      shipyard serve models/ --host 0.0.0.0 --auth tokens.json --tls-cert cert.pem --tls-key key.pem
      shipyard serve models/ --shutdown-delay 5 --drain-timeout 30
      shipyard serve models/ --workers 2 --grpc-port 8001
      shipyard serve s3://bucket/models --repository-cache /var/cache/shipyard
    """
    from shipyard.serving.security import check_exposure
    from shipyard.serving.server import serve
    from shipyard.serving.settings import check_repository

    settings = settings_from(args, args.repository)
    ray = getattr(args, "ray_settings", None)
    if ray is not None:
        settings = settings.model_copy(update={"ray": ray})
    check_repository(settings)
    check_exposure(settings)  # before binding an address it will not serve
    try:
        serve(settings=settings)  # logs where it serves, as a log line (JSON with --log-format)
    except Exception as exc:
        from shipyard.cli.failures import error_line, exit_code

        code = exit_code(exc)
        if settings.log_format != "json" or code is None:
            raise
        # JSON logs: the failure is a JSON line too, not the CLI's text line
        logging.getLogger("shipyard.serving.server").error(error_line(exc))
        return code
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """build the example repository (cached) and serve it with one call per model

    examples:
      shipyard demo --repo models/
      shipyard demo --repo models/ --no-text --once
      shipyard demo --repo models/ --no-serve
    """
    from shipyard.demo import build_demo_repository

    with output.status("building the example models (cached after the first run)…") as status:
        results = build_demo_repository(
            args.repo,
            include_text=not args.no_text,
            progress=lambda msg: status.update(msg),
            replace=True,
        )
    table = output.table(
        "model", "version", "inputs", "outputs", "source", "cached", title="repository"
    )
    for r in results:
        m = r.manifest
        table.add_row(
            m.name,
            str(m.version),
            ", ".join(s.describe() for s in m.inputs),
            ", ".join(s.describe() for s in m.outputs),
            f"{m.source.framework} {m.source.framework_version}",
            "yes" if r.from_cache else f"built in {r.build_seconds:.1f} s",
        )
    output.show(table)
    if args.no_serve:
        return 0
    from shipyard.serving.server import start_in_thread

    if args.port is None:
        args.port = 8000
    settings = settings_from(args, args.repo)
    server = start_in_thread(settings=settings)
    try:
        output.say(f"serving on [bold]{server.url}[/] — one V2 request per model:")
        failures = 0
        for r in results:
            name = r.manifest.name
            failures += _demo_request(server.url, name, r.request.read_bytes())
            processing = r.manifest.processing
            text = processing.text if processing is not None else None
            if text is not None:
                from shipyard.demo.text import text_request

                body = json.dumps(text_request()).encode()
                failures += _demo_request(server.url, name, body, what=f"{name} ({text.input})")
            image = processing.image if processing is not None else None
            sample = next((p for n, p in r.data.items() if n.endswith(".png")), None)
            if image is not None and sample is not None:
                from shipyard.demo.images import image_request

                body, head = image_request([sample.read_bytes()], input_name=image.input)
                failures += _demo_request(
                    server.url, name, body, what=f"{name} ({image.input}: {sample.name})",
                    headers={"Inference-Header-Content-Length": str(head)},
                )  # fmt: skip
        output.say(
            f"metrics: curl {server.url}/metrics   repository: curl -X POST {server.url}/v2/repository/index"
        )
        if args.once:
            return 1 if failures else 0
        output.say("serving until Ctrl-C")
        while server.running:
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def _demo_request(
    url: str,
    name: str,
    body: bytes,
    *,
    what: str | None = None,
    headers: dict[str, str] | None = None,
) -> int:
    what = what or name
    req = urllib.request.Request(f"{url}/v2/models/{name}/infer", data=body, method="POST")
    req.add_header("Content-Type", "application/octet-stream" if headers else "application/json")
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        output.say(f"  [red]{what}: HTTP {exc.code}[/] {exc.read().decode(errors='replace')}")
        return 1
    ms = (time.perf_counter() - started) * 1000
    parts = []
    for tensor in doc["outputs"]:
        data = tensor.get("data", [])
        preview = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in data[:4])
        more = " …" if len(data) > 4 else ""
        parts.append(f"{tensor['name']}{tensor['shape']} = [{preview}{more}]")
    output.say(
        f"  [green]{what}[/] v{doc.get('model_version')} in {ms:.1f} ms: " + "; ".join(parts)
    )
    return 0
