"""`shipyard deploy ray`: `shipyard serve` with each model version on Ray Serve replicas."""

from __future__ import annotations

import argparse
from typing import Any

from shipyard.cli.parsing import Subparsers, add_command
from shipyard.cli.serve import cmd_serve, repository_arg, serve_flags, settings_from


def register_ray(actions: Subparsers) -> None:
    """`shipyard deploy ray`: every serve flag (but --workers) and the Ray Serve ones."""
    r = add_command(actions, "ray", cmd_deploy_ray)
    r.add_argument(
        "repository",
        type=repository_arg,
        nargs="?",
        help="repository folder (default: models) or s3://bucket/prefix",
    )
    serve_flags(r)
    g = r.add_argument_group(
        "Ray Serve",
        "each model version is one Ray Serve deployment; this server stays the front door\n"
        "(a model.toml [ray] section overrides these per model)",
    )
    g.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to join (auto, ray://HEAD:10001); default: start one here on 127.0.0.1",
    )
    g.add_argument("--replicas", type=int, metavar="N", help="replicas per version (default 1)")
    g.add_argument(
        "--autoscale",
        type=_autoscale,
        metavar="MIN,MAX",
        help="let Ray Serve autoscale each version between MIN and MAX replicas",
    )
    g.add_argument(
        "--num-cpus",
        type=float,
        metavar="F",
        help="CPUs per replica, fractions allowed (default 1)",
    )
    g.add_argument(
        "--max-ongoing-requests",
        type=int,
        metavar="N",
        help="batches one replica holds at once (default 4)",
    )
    g.add_argument(
        "--execution-timeout",
        type=float,
        metavar="S",
        help="a batch not answered by then fails with 503 (default 30)",
    )


def _autoscale(value: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give MIN,MAX replicas, e.g. 1,4") from None
    return low, high


def cmd_deploy_ray(args: argparse.Namespace) -> int:
    """serve a repository with Ray Serve replicas behind Shipyard's own front door

    The server (V2 HTTP and gRPC, TF Serving REST, auth, limits, batching, metrics) runs
    here; each model version runs as one Ray Serve deployment whose replicas load and verify
    it. Without --address a local Ray cluster is started on 127.0.0.1 and stopped on exit.
    Needs the `ray` extra (pip install 'shipyard[ray]').

    examples:
      shipyard deploy ray models/ --replicas 2
      shipyard deploy ray models/ --autoscale 1,4 --num-cpus 0.5 --grpc-port 8001
      shipyard deploy ray models/ --address auto --host 0.0.0.0 --auth tokens.json
    """
    from pydantic import ValidationError

    from shipyard.errors import UsageError
    from shipyard.serving.settings import RaySettings, validation_details

    ray: dict[str, Any] = {}
    for flag, key in (
        ("address", "address"),
        ("replicas", "replicas"),
        ("num_cpus", "num_cpus"),
        ("max_ongoing_requests", "max_ongoing_requests"),
        ("execution_timeout", "execution_timeout_s"),
    ):
        if getattr(args, flag) is not None:
            ray[key] = getattr(args, flag)
    if args.autoscale is not None:
        ray["min_replicas"], ray["max_replicas"] = args.autoscale
    args.workers = None
    base = settings_from(args, args.repository)
    merged = {**(base.ray.model_dump() if base.ray is not None else {}), **ray}
    try:
        ray_settings = RaySettings.model_validate(merged)
    except ValidationError as exc:
        raise UsageError(f"deploy ray: {validation_details(exc)}") from None
    args.ray_settings = ray_settings
    return cmd_serve(args)
