"""The Ray Serve replica of one model version: loads and verifies it, then runs batches.

Each replica is a Ray actor (`ray_pool` deploys one Serve application per served version,
`shipyard-NAME-vVERSION`, with no HTTP route: Shipyard's own server is the front door and
calls it through a `DeploymentHandle`). A replica loads the version with
`shipyard.load_model` from the repository path (every hash and the signature checked again,
in its own process; the path must be the same on every Ray node: one machine, a shared
volume, or the s3:// cache), and an encrypted package with the KEK of its own environment
($SHIPYARD_KEK on the Ray nodes): no key travels through Ray's object store or control plane.

Batches arrive already checked and processed by the front door (`Runtime.run`); the answer
is the graph's outputs. Errors a request caused (`InputError`) reach the front door as
themselves; Ray Serve restarts a replica whose actor died.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.processing.padding import BatchPadding
from shipyard.runtime.base import RuntimeOptions
from shipyard.runtime.synthesis import InputHints


@dataclass(frozen=True)
class ReplicaInfo:
    """What a loaded replica tells the front door about its version."""

    digest: str
    """The manifest digest it verified (the front door checks it is the version it serves)."""
    providers: list[str]
    graph_hints: dict[str, InputHints]
    batch_padding: BatchPadding | None


class VersionReplica:
    """One replica: the verified version and its ONNX Runtime session (a Ray actor)."""

    def __init__(
        self, path: str, version: int, options: RuntimeOptions, public_key: str | None
    ) -> None:
        _keep_on_loopback()
        from shipyard.model import load_model
        from shipyard.security.keys import kek_from_env

        self.model = load_model(
            Path(path),
            version=version,
            options=options,
            public_key=Path(public_key) if public_key else None,
            kek=kek_from_env(),
        )
        processor = self.model.processor
        self.info = ReplicaInfo(
            digest=self.model.manifest.digest,
            providers=self.model.runtime.providers,
            graph_hints=self.model.graph_hints,
            batch_padding=processor.batch_padding if processor is not None else None,
        )

    def describe(self) -> ReplicaInfo:
        return self.info

    def run(self, feed: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        return self.model.runtime.run(feed, list(outputs) or None)

    def __del__(self) -> None:
        model = getattr(self, "model", None)
        if model is not None:
            model.close()


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Set to "0" by `ray_pool` for a local cluster on 127.0.0.1 (inherited by every Ray process)."""


def _keep_on_loopback() -> None:
    """On a loopback-only cluster, bind this replica's inter-deployment gRPC server to
    127.0.0.1: Ray Serve binds it to [::] whatever the node address (replica.py), the one
    listener of the cluster on every interface. It starts right after this constructor."""
    import os

    if os.environ.get(LOOPBACK_ENV) != "0":
        return
    try:
        import importlib

        replica: Any = importlib.import_module("ray.serve._private.replica")
    except ImportError:
        return
    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "shipyard_loopback", False):
        return

    def loopback(server: object, address: str) -> int:
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address.removeprefix("[::]:")
        port: int = bind(server, address)
        return port

    loopback.shipyard_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = loopback
