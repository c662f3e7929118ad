"""The transport-agnostic data plane: the one place serving logic lives.

Transports (V2 and TF Serving REST, OpenAI embeddings, V2 gRPC; the packages `http/` and `grpc/`) only
decode their wire format into `shipyard.codecs.InferenceRequest`, call a method here, and
encode what it returns; they pass the call's `calls.CallContext` down, and the data plane
emits one `calls.CallEvent` per audited call (and a `ModelChange` per model state change)
to the listeners of its `events`, the audit writer among them. Every method either returns
plain data or raises a `ShipyardError` whose `.status` is the HTTP status (gRPC transports
map it to a status code):
`ModelNotFound` 404, `ModelNotReady`/`Overloaded` 503, `DeadlineExceeded` 504,
`InputError`/`ProtocolError` 400.

Versions arrive as the strings found in URLs (None = the server picks the highest READY
version); a version that is not a positive integer is simply not found.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from shipyard.codecs.limits import DecodeLimits
from shipyard.codecs.types import InferenceRequest, InferenceResponse
from shipyard.errors import ShipyardError
from shipyard.package.tensorspec import TensorSpec
from shipyard.processing.runtime import Processor
from shipyard.serving.calls import Call, CallContext, Events, outcome_of_error
from shipyard.serving.errors import ModelNotFound, ModelNotReady
from shipyard.serving.logs import request_id
from shipyard.serving.manager import ModelManager
from shipyard.serving.metrics import Metrics
from shipyard.serving.request_checks import check_model_name, version_number
from shipyard.serving.rollout import Action
from shipyard.serving.settings import LimitsSettings
from shipyard.serving.traffic import Plan, RouteKey
from shipyard.serving.triton_config import triton_config
from shipyard.serving.version_config import decode_limits
from shipyard.serving.version_run import MIRROR_PROTOCOL, Mirrors, run_on
from shipyard.serving.version_state import IndexEntry, ServedVersion

SERVER_NAME = "shipyard"
EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
    "schedule_policy",
    "shipyard_rollout",
)
"""V2 extensions, Triton's names; `shipyard_rollout` is ours: `GET /v2/models/{m}/rollout`."""
PLATFORM = "onnx_onnxv1"


@dataclass(frozen=True)
class ModelSignature:
    """What a served version takes and returns (for codecs that need the model's dtypes)."""

    name: str
    version: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    processed_inputs: list[TensorSpec] = field(default_factory=list)
    """Inputs the server processes into `inputs` (a `text` BYTES input; shipyard.processing)."""


@dataclass(frozen=True)
class EmbeddingTarget:
    """Where a text-embedding call goes: a version, its text input and its embedding output."""

    version: str
    text_input: str
    output: str
    processor: Processor
    """The version's processing: token ids sent as such are checked and padded by it."""


class DataPlane:
    """Health, metadata, inference, repository control and statistics for every transport."""

    def __init__(self, manager: ModelManager, metrics: Metrics) -> None:
        self.manager = manager
        self.metrics = metrics
        self.events = Events()
        """Audited calls and model changes, for listeners such as the audit writer."""
        manager.listeners.append(self.events.model_changed)
        self.readiness_checks: list[Callable[[], str | None]] = []
        """Each returns why the server must not take traffic now (e.g. the audit log cannot
        be written), or None; any reason makes `ready()` false."""
        self.draining = False
        """True once the server is shutting down: it still answers, but is not ready."""
        self.on_repository_change: list[Callable[[str, str], None]] = []
        """Called with ("load" | "unload", model) after a load or unload by request (the
        other workers under `--workers N` do the same)."""
        self._server_limits = manager.settings.limits
        self._server_decode_limits = decode_limits(self._server_limits)
        self.mirrors = Mirrors(compared=manager.router.compared, observe=self._observe_mirror)
        """A rollout's mirrored calls (shadow traffic, canary agreement checks)."""
        metrics.gauge_function(metrics.requests_in_flight, lambda: float(self.in_flight()))

    # -- health ---------------------------------------------------------------------------

    def live(self) -> bool:
        """The process is up and answering (Kubernetes livenessProbe)."""
        return True

    def ready(self) -> bool:
        """Startup loading is done, (strict readiness) every model can serve, and no
        readiness check objects."""
        return self.manager.ready() and self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why the server is shutting down, else the first readiness check's objection, or None."""
        if self.draining:
            return "the server is shutting down: send new requests to another replica"
        for check in self.readiness_checks:
            reason = check()
            if reason is not None:
                return reason
        return None

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether that model (version) can take requests now (never while shutting down);
        ModelNotFound if unknown."""
        number = version_number(name, version)
        try:
            self.manager.get(name, number)
        except ModelNotReady:
            return False
        return not self.draining

    def drain(self) -> None:
        """Shutting down: readiness (server and models) answers not ready from now on;
        requests are still answered (the transports close their listeners later)."""
        self.draining = True

    def in_flight(self) -> int:
        """Inference requests holding a model version now (every transport)."""
        return self.manager.in_flight()

    # -- metadata -------------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        import shipyard

        return {
            "name": SERVER_NAME,
            "version": shipyard.__version__,
            "extensions": list(EXTENSIONS),
        }

    def route(self, name: str, version: str | None, route_key: RouteKey | None = None) -> Plan:
        """Where a request for that model (version) goes, as `infer` would route it; a
        transport that must type the request first (TF Serving) routes, then passes it."""
        return self.manager.router.plan(name, version_number(name, version), route_key)

    def model_signature(
        self, name: str, version: str | None = None, *, route: Plan | None = None
    ) -> ModelSignature:
        served = (
            route.served
            if route is not None
            else self.manager.get(name, version_number(name, version))
        )
        model, processor = served.model, served.model.processor
        if processor is None:
            return ModelSignature(name, served.version, model.inputs, model.outputs)
        return ModelSignature(
            name,
            served.version,
            model.inputs,
            [*model.outputs, *processor.output_specs(model.outputs)],
            processed_inputs=processor.input_specs,
        )

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """V2 model metadata: name, versions served, platform, inputs and outputs."""
        signature = self.model_signature(name, version)
        return {
            "name": name,
            "versions": [str(v) for v in self.manager.served_versions(name)],
            "platform": PLATFORM,
            "inputs": [
                _tensor_metadata(s) for s in (*signature.processed_inputs, *signature.inputs)
            ],
            "outputs": [_tensor_metadata(s) for s in signature.outputs],
        }

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Triton's model configuration of the served version (`triton_config`)."""
        return triton_config(name, self.manager.get(name, version_number(name, version)))

    def package_metadata(self, name: str, version: str | None = None) -> dict[str, str]:
        """The served version's package metadata (the manifest's free-form `metadata`)."""
        served = self.manager.get(name, version_number(name, version))
        return dict(served.model.manifest.metadata)

    def embedding_target(self, name: str) -> EmbeddingTarget | None:
        """What a text-embedding call runs on the model's highest ready version; None when
        its package does not turn text into sentence embeddings."""
        served = self.manager.get(name)
        processor = served.model.processor
        output = processor.embedding_output if processor is not None else None
        if processor is None or output is None or processor.spec.text is None:
            return None
        return EmbeddingTarget(str(served.version), processor.spec.text.input, output, processor)

    # -- inference ------------------------------------------------------------------------

    def infer(
        self,
        name: str,
        request: InferenceRequest,
        *,
        version: str | None = None,
        protocol: str,
        received_ns: int | None = None,
        usage: dict[str, int] | None = None,
        call: Call | CallContext | None = None,
        gone: Callable[[], bool] | None = None,
        route_key: RouteKey | None = None,
        route: Plan | None = None,
    ) -> Coroutine[Any, Any, InferenceResponse]:
        """Validate, batch and run one request; outputs are the requested ones, in order.

        `protocol` labels the metrics ("v2_http", "tfserving_http", "v2_grpc");
        `received_ns` (time.perf_counter_ns() when the transport got the request) makes the
        reported latency include decoding. `usage`, when given, receives `prompt_tokens`
        (the real tokens of processed text inputs). `call`: the call's context (this infer
        is the whole audited call: it emits its event; None: an anonymous one), or the `Call`
        the transport opened and closes itself. `gone`: true once the client has left (a
        queued request is then dropped unrun). `route_key`: looks up a request header by
        name (a canary's `sticky_header`). A request naming no version is routed by the
        model's rollout and failover (`traffic`), or goes where `route` (from `route()`)
        says; the response names the version that answered.

        A plain method returning the coroutine to await (no coroutine of its own around
        the one doing the work: this runs per request).
        """
        started = received_ns if received_ns is not None else time.perf_counter_ns()
        args = (name, request, version, protocol, started, usage, gone, route_key, route)
        if not self.events.listeners:  # no audit: no partial, no wrapping coroutine
            return self._infer(*args)
        return self.events.infer(
            call,
            functools.partial(self._infer, *args),
            model=name,
            version=version,
            protocol=protocol,
            started_ns=started,
        )

    async def _infer(
        self,
        name: str,
        request: InferenceRequest,
        version: str | None,
        protocol: str,
        started: int,
        usage: dict[str, int] | None,
        gone: Callable[[], bool] | None,
        route_key: RouteKey | None,
        route: Plan | None,
        /,
    ) -> InferenceResponse:
        # positional: `infer` passes its arguments on as one tuple (this runs per request)
        if route is None:
            route = self.manager.router.plan(name, version_number(name, version), route_key)
        served = route.served
        served.acquire()  # held for the request (not closed meanwhile); `leased()` unrolled
        model_version = served.label
        try:
            ran = await run_on(served, request, started=started, usage=usage, gone=gone)
            self.manager.drift.observe(name, served.version, ran.inputs, ran.result.outputs)
        except Exception as exc:
            outcome = outcome_of_error(exc)
            total_ns = time.perf_counter_ns() - started
            self.manager.router.observe(route, outcome, total_ns / 1e6)
            self.metrics.observe_request(
                model=name,
                version=model_version,
                protocol=protocol,
                outcome=outcome,
                total_ns=total_ns,
            )
            raise
        finally:
            served.release()
        total_ns = time.perf_counter_ns() - started
        self.metrics.observe_request(
            model=name,
            version=model_version,
            protocol=protocol,
            outcome="success",
            total_ns=total_ns,
            queue_ns=ran.result.queue_ns,
            compute_ns=ran.result.compute_ns,
        )
        self.manager.router.observe(route, "success", total_ns / 1e6)
        if route.rollout is not None:
            mirror = self.manager.router.mirror_of(route)
            if mirror is not None:
                self.mirrors.start(route, mirror, request, ran.outputs)
        return InferenceResponse(
            model_name=name,
            model_version=model_version,
            outputs=ran.outputs,
            id=request.id,
        )

    # -- rollouts -------------------------------------------------------------------------

    def rollout_status(self, name: str) -> dict[str, Any]:
        """`GET /v2/models/{m}/rollout`: the model's rollout phase, gate, evidence, decision."""
        return self.manager.router.status(check_model_name(name))

    async def decide_rollout(
        self, name: str, action: Action, *, call: Call | CallContext | None = None
    ) -> dict[str, Any]:
        """Promote or roll back the model's rollout by hand (audited as a model change)."""
        return await self.manager.router.decide(
            check_model_name(name), action, cause=_context_of(call)
        )

    def _observe_mirror(self, served: ServedVersion, outcome: str, total_ns: int) -> None:
        self.metrics.observe_request(
            model=served.name,
            version=str(served.version),
            protocol=MIRROR_PROTOCOL,
            outcome=outcome,
            total_ns=total_ns,
        )

    def limits_for(self, name: str | None) -> LimitsSettings:
        """Request limits for a model: those its highest ready version loaded with (its
        model.toml [limits] over the server's), else the server's."""
        return self.both_limits_for(name)[0]

    def decode_limits_for(self, name: str | None) -> DecodeLimits:
        """The codec-level part of `limits_for(name)`, as the codecs take it."""
        return self.both_limits_for(name)[1]

    def both_limits_for(self, name: str | None) -> tuple[LimitsSettings, DecodeLimits]:
        """`limits_for(name)` and `decode_limits_for(name)` from one look-up (the HTTP
        admission step keeps the second for the handler that decodes the body)."""
        served = self._served_or_none(name)
        if served is None:
            return self._server_limits, self._server_decode_limits
        return served.limits, served.decode_limits

    def _served_or_none(self, name: str | None) -> ServedVersion | None:
        if name is None:
            return None
        try:
            return self.manager.get(name)
        except ShipyardError:  # unknown or not ready: the call fails anyway
            return None

    # -- model repository -----------------------------------------------------------------

    async def repository_index(self, *, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model (and version) with state READY/UNAVAILABLE/LOADING/UNLOADING and reason."""
        return [_index_json(e) for e in await self.manager.index(ready_only=ready_only)]

    async def model_status(self, name: str) -> list[IndexEntry]:
        """The index rows of one model (all its versions); ModelNotFound if unknown."""
        check_model_name(name)
        entries = [e for e in await self.manager.index() if e.name == name]
        if not entries:
            raise ModelNotFound(name)
        return entries

    async def load_model(self, name: str, *, call: Call | CallContext | None = None) -> None:
        """Load or reload a model from the repository; ModelLoadError (400) if no version
        serves or the newest version the policy wants failed to load. The model changes
        it causes name `call` (None: anonymous)."""
        try:
            await self.manager.load(check_model_name(name), cause=_context_of(call))
        finally:  # a failed load may still have changed what serves: peers load too
            self._changed("load", name)

    async def unload_model(self, name: str, *, call: Call | CallContext | None = None) -> None:
        """Unload every version after its in-flight requests finish."""
        await self.manager.unload(check_model_name(name), cause=_context_of(call))
        self._changed("unload", name)

    def _changed(self, action: str, name: str) -> None:
        for hook in self.on_repository_change:
            hook(action, name)

    # -- statistics -----------------------------------------------------------------------

    def statistics(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Triton's statistics extension: {"model_stats": [...]} for all, a model, a version."""
        if name is not None:
            check_model_name(name)
        stats = self.metrics.model_stats(name, version)
        if name is not None and not stats:
            raise ModelNotFound(name, version)
        return {"model_stats": stats}

    def metrics_text(self) -> bytes:
        """Prometheus text exposition of this server's metrics."""
        return self.metrics.exposition()


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.v2_datatype, "shape": list(spec.shape)}


def _index_json(entry: IndexEntry) -> dict[str, str]:
    row = {"name": entry.name}
    if entry.version is not None:
        row["version"] = str(entry.version)
    row["state"] = entry.state.value
    row["reason"] = entry.reason
    return row


def _context_of(call: Call | CallContext | None) -> CallContext:
    """The frozen context of a call (None: an anonymous one, with this request's id)."""
    if isinstance(call, Call):
        return call.context
    return call or CallContext(request_id=request_id.get() or None)
