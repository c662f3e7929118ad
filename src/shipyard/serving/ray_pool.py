"""Ray Serve as the replica pool behind Shipyard's own front door (`shipyard deploy ray`).

KServe's `RayModel` pattern: the server a client talks to is Shipyard's (V2 HTTP and gRPC,
TF Serving REST, auth, limits, processing, batching, rollouts, audit, metrics), and each
served model version is one Ray Serve application, `shipyard-NAME-vVERSION`, with one
deployment of `ray_replica.VersionReplica` and no HTTP route (Ray Serve's own proxy is
off). The version's batcher hands every batch to a `DeploymentHandle`; Ray Serve picks the
replica (power of two choices on queue length), restarts dead ones and autoscales between
`min_replicas` and `max_replicas` on the batches in flight.

The cluster is joined once per server process (`connect`, on the first load of a version
on Ray): with no address a local one is started, bound to 127.0.0.1 (`RaySettings.host`),
dashboard off, tried twice (`_init`) and stopped by `shutdown` when the server exits; with
an address (`auto`, `ray://HEAD:10001`) the server only removes its own applications. A
load checks the digest every replica verified against the front door's manifest.

Failures map onto the serving errors: an error the request caused comes back as itself
(400), a replica that died under a batch or silent past `execution_timeout_s` is
`WorkerUnavailable` (503, call cancelled), anything else `RuntimeBackendError` (500).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import RuntimeBackendError, ShipyardError
from shipyard.model import Model
from shipyard.package.manifest import read_manifest
from shipyard.package.store import resolve_version_dir
from shipyard.package.tensorspec import TensorSpec
from shipyard.runtime.base import RuntimeOptions, check_inputs
from shipyard.serving.addresses import is_loopback
from shipyard.serving.errors import WorkerUnavailable
from shipyard.serving.isolation import remote_model
from shipyard.serving.ray_replica import LOOPBACK_ENV, ReplicaInfo, VersionReplica
from shipyard.serving.settings import RaySettings

log = logging.getLogger("shipyard.serving.ray")

NAMESPACE = "shipyard"
SINGLE_MACHINE_ENV = LOOPBACK_ENV
"""Ray's single-machine (loopback-only) switch: "0" makes a local cluster use 127.0.0.1."""
APP_PREFIX = "shipyard-"
STOP_GRACE_S = 15.0
"""How long a clean-up step may wait for the cluster beyond a batch's own timeout."""
_lock = threading.Lock()
_submit_lock = threading.Lock()
_cluster: RayCluster | None = None


class RayUnavailable(RuntimeBackendError):
    """Ray is not installed, or the cluster cannot be started or joined."""


def app_name(model: str, version: int) -> str:
    """The Serve application of one served version."""
    return f"{APP_PREFIX}{model}-v{version}"


def _init(ray: Any, kwargs: dict[str, Any], *, local: bool) -> Any:
    """`ray.init(**kwargs)`; a local cluster that fails to start (its processes can miss
    Ray's start-up deadline on a busy machine) is tried once more."""
    for last in (not local, True):
        try:
            return ray.init(**kwargs)
        except Exception as exc:
            if last:
                where = kwargs.get("address") or "a local cluster"
                raise RayUnavailable(f"Ray: cannot start or join {where} ({exc})") from None
            log.warning("Ray: the local cluster did not start (%s); trying once more", exc)
            with contextlib.suppress(Exception):
                ray.shutdown()
    raise AssertionError("unreachable")


class RayCluster:
    """This server's connection to a Ray cluster with Serve started on it."""

    def __init__(self, settings: RaySettings) -> None:
        if settings.address is None and is_loopback(settings.host):
            # A one-machine cluster on the loopback: Ray otherwise swaps 127.0.0.1 for the
            # machine's address and its gRPC servers listen on every interface. Read when
            # ray is imported, and inherited by every process of the cluster.
            os.environ.setdefault(SINGLE_MACHINE_ENV, "0")
        # Ray's C++ failure handler would print a stack dump for the SIGTERM that drains us
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        try:
            ray, serve = _module("ray"), _module("ray.serve")
        except ImportError as exc:
            raise RayUnavailable(
                f"Ray Serve is not installed ({exc}); install shipyard[ray]"
            ) from None
        self.settings = settings
        self.started_here = False
        self.apps: set[str] = set()
        context = None
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "namespace": NAMESPACE,
                "log_to_driver": False,
                "configure_logging": False,
                "include_dashboard": False,
            }
            if settings.address is None:
                kwargs["_node_ip_address"] = settings.host
                kwargs["num_cpus"] = os.cpu_count() or 1
                self.started_here = True
            else:
                kwargs["address"] = settings.address
            context = _init(ray, kwargs, local=settings.address is None)
        try:
            serve.start(proxy_location="Disabled", http_options={"host": settings.host})
        except Exception as exc:
            raise RayUnavailable(f"Ray Serve cannot start ({exc})") from None
        resources = ray.cluster_resources()
        gcs = context.address_info.get("gcs_address") if context is not None else None
        self.address: str | None = gcs or settings.address
        log.info(
            "Ray Serve %s at %s: %s CPUs, %d node(s)",
            "started on this machine" if self.started_here else "joined",
            self.address,
            resources.get("CPU", 0),
            len([n for n in ray.nodes() if n.get("Alive")]),
        )

    def deploy(
        self,
        path: Path,
        version: int,
        name: str,
        deployment: RaySettings,
        *,
        options: RuntimeOptions,
        public_key: Path | None,
    ) -> Any:
        """Run the version's application and return its handle once every replica loaded."""
        app = app_name(name, version)
        if options.intra_op_threads == 0:  # as many threads as CPUs Ray reserves for it
            threads = max(1, math.ceil(deployment.num_cpus))
            options = options.model_copy(update={"intra_op_threads": threads})
        scaling: dict[str, Any]
        if deployment.min_replicas is not None:
            scaling = {
                "autoscaling_config": {
                    "min_replicas": deployment.min_replicas,
                    "initial_replicas": max(deployment.min_replicas, 1),
                    "max_replicas": deployment.max_replicas,
                    "target_ongoing_requests": deployment.target_ongoing_requests,
                }
            }
        else:
            scaling = {"num_replicas": deployment.replicas}
        with _submit_lock:  # Serve's client is not safe for two deploys at once (pickling)
            handle = self._submit(
                app, f"{name}-v{version}", deployment, scaling, path, version, options, public_key
            )
        try:
            return _wait_running(handle, app, deployment.start_timeout_s)
        except BaseException:
            self.delete(app)
            raise

    def _submit(
        self,
        app: str,
        deployment_name: str,
        deployment: RaySettings,
        scaling: dict[str, Any],
        path: Path,
        version: int,
        options: RuntimeOptions,
        public_key: Path | None,
    ) -> Any:
        serve, api = _module("ray.serve"), _module("ray.serve.api")
        bound = (
            serve.deployment(VersionReplica)
            .options(
                name=deployment_name,
                ray_actor_options={"num_cpus": deployment.num_cpus},
                max_ongoing_requests=deployment.max_ongoing_requests,
                health_check_period_s=2,
                health_check_timeout_s=max(30.0, deployment.execution_timeout_s),
                graceful_shutdown_timeout_s=deployment.execution_timeout_s,
                **scaling,
            )
            .bind(str(path.resolve()), version, options, str(public_key) if public_key else None)
        )
        with _lock:
            self.apps.add(app)
        # serve.run waits for RUNNING without a bound; its own _run(_blocking=False) does not
        run = getattr(api, "_run", None)
        if run is not None:
            return run(bound, _blocking=False, name=app, route_prefix=None)
        return serve.run(bound, name=app, route_prefix=None)  # pragma: no cover

    def delete(self, app: str) -> None:
        """Delete one application, waiting for its replicas to finish (bounded: a cluster
        whose processes are gone would never answer)."""
        serve = _module("ray.serve")

        with _lock:
            self.apps.discard(app)
        wait_s = self.settings.execution_timeout_s + STOP_GRACE_S
        _bounded(lambda: serve.delete(app, _blocking=True), wait_s, f"deleting {app}")

    def shutdown(self) -> None:
        """Remove this server's applications; stop the cluster when this server started it.
        Every step is bounded, so a cluster that died first (a SIGTERM sent to the whole
        process group) cannot hold the server's exit."""
        ray, serve = _module("ray"), _module("ray.serve")

        for app in sorted(self.apps):
            self.delete(app)
        if self.started_here:
            _bounded(serve.shutdown, STOP_GRACE_S, "stopping Ray Serve")
        _bounded(ray.shutdown, STOP_GRACE_S, "stopping Ray")


def _bounded(step: Callable[[], object], timeout_s: float, what: str) -> None:
    """Run a clean-up step on a daemon thread; after `timeout_s`, log and go on."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            step()
        except Exception as exc:  # the cluster is going away: nothing left to remove
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"shipyard-ray-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        log.warning("Ray: no answer within %.0f s while %s; going on without it", timeout_s, what)
    elif failure:
        log.warning("Ray: %s failed (%s)", what, failure[0])


def _wait_running(handle: Any, app: str, timeout_s: float) -> Any:
    """A bounded wait for the application to be RUNNING (a replica that keeps failing to
    load makes it DEPLOY_FAILED, with the load error)."""
    serve = _module("ray.serve")
    ApplicationStatus = _module("ray.serve.schema").ApplicationStatus

    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(app)
        if status is not None and status.status == ApplicationStatus.RUNNING:
            return handle
        if status is not None and status.status == ApplicationStatus.DEPLOY_FAILED:
            raise RuntimeBackendError(f"Ray Serve: {_failure(status)}")
        if time.monotonic() > deadline:
            raise RuntimeBackendError(
                f"Ray Serve: {app} was not running within {timeout_s:g} s "
                f"({status.status if status else 'no status'}); raise [ray] start_timeout_s "
                "or check the cluster has the CPUs its replicas ask for"
            )
        time.sleep(0.1)


def _failure(status: Any) -> str:
    """The load error of a failed application, from its deployment's message (the last
    line of the replica's exception, not Ray's traceback)."""
    messages = [d.message for d in status.deployments.values() if d.message] or [status.message]
    text = " ".join(messages)
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line and not line.startswith(("File ", "Traceback", "^", "~")):
            return line
    return text.strip() or "its replicas failed to start"


def _module(name: str) -> Any:
    """A Ray module, typed as Any (Ray ships partial annotations)."""
    import importlib

    return importlib.import_module(name)


def connect(settings: RaySettings) -> RayCluster:
    """The server process's cluster (started or joined on the first call)."""
    global _cluster
    with _lock:
        if _cluster is None:
            _cluster = RayCluster(settings)
        return _cluster


def shutdown() -> None:
    """Leave (or stop) the cluster; nothing when none was joined."""
    global _cluster
    with _lock:
        cluster, _cluster = _cluster, None
    if cluster is not None:
        cluster.shutdown()


def open_on_ray(
    path: Path,
    version: int,
    deployment: RaySettings,
    *,
    options: RuntimeOptions,
    public_key: Path | None,
    kek: bytes | None,
) -> Model:
    """The version as a Model whose runtime is its Ray Serve deployment."""
    version_dir = resolve_version_dir(path, version)
    manifest = read_manifest(version_dir)
    cluster = connect(deployment)
    handle = cluster.deploy(
        path, version, manifest.name, deployment, options=options, public_key=public_key
    )
    app = app_name(manifest.name, version)
    try:
        info = _describe(handle, deployment.execution_timeout_s)
        runtime = RayRuntime(
            handle,
            info,
            deployment,
            cluster=cluster,
            app=app,
            name=manifest.name,
            version=version,
            inputs=manifest.inputs,
            outputs=manifest.outputs,
        )
    except BaseException:
        cluster.delete(app)
        raise
    return remote_model(
        version_dir,
        manifest,
        runtime,
        digest=info.digest,
        where="its Ray replicas",
        graph_hints=info.graph_hints,
        batch_padding=info.batch_padding,
        kek=kek,
    )


def _describe(handle: Any, timeout_s: float) -> ReplicaInfo:
    """The first call on a new handle (it builds the handle's router, whose config Serve
    pickles like a deploy does: one at a time)."""
    with _submit_lock:
        info: ReplicaInfo = _result(handle.describe.remote(), timeout_s)
    return info


def _result(response: Any, timeout_s: float) -> Any:
    """A handle call's answer, with Ray's exceptions as Shipyard's."""
    from ray.exceptions import RayActorError, RayTaskError

    try:
        return response.result(timeout_s=timeout_s)
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ShipyardError):
            raise cause from None
        what = f"{type(cause).__name__}: {cause}" if cause is not None else exc.function_name
        raise RuntimeBackendError(f"Ray replica: {what}") from None
    except RayActorError:
        raise _Lost("its Ray replica died under the batch; Ray Serve replaces it") from None
    except TimeoutError:
        response.cancel()
        raise _Lost(f"its Ray replica did not answer within {timeout_s:g} s") from None


class _Lost(Exception):
    """The replica died or hung: the batch fails with 503 (WorkerUnavailable)."""


class RayRuntime:
    """The Runtime interface over one version's Ray Serve deployment."""

    def __init__(
        self,
        handle: Any,
        info: ReplicaInfo,
        settings: RaySettings,
        *,
        cluster: RayCluster,
        app: str,
        name: str,
        version: int,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
    ) -> None:
        self.name = name
        self.version = version
        self.app = app
        self.settings = settings
        self.info = info
        self._handle = handle
        self._cluster = cluster
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        self._closing = False

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    @property
    def providers(self) -> list[str]:
        return list(self.info.providers)

    @property
    def down(self) -> str | None:
        """Why it cannot run a batch now; None while Ray Serve can route one."""
        return "it is being unloaded" if self._closing else None

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        return self.run(check_inputs(self._inputs, inputs), output_names)

    def run(
        self, feed: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one batch on a replica; WorkerUnavailable (503) when it dies or hangs."""
        if self._closing:
            raise WorkerUnavailable(self.name, self.version, reason="it is being unloaded")
        response = self._handle.run.remote(dict(feed), list(output_names or ()))
        try:
            result: dict[str, np.ndarray] = _result(response, self.settings.execution_timeout_s)
        except _Lost as lost:
            raise WorkerUnavailable(self.name, self.version, reason=str(lost)) from None
        return result

    def close(self) -> None:
        """Delete the version's application (Ray Serve drains its replicas first)."""
        if self._closing:
            return
        self._closing = True
        self._cluster.delete(self.app)
