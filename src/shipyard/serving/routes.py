"""The route table: every HTTP path and gRPC method, what it needs, and how it is dispatched.

One row per HTTP route (`ROUTES`): method, path template, handler, the token scope it needs
and the model that scope is about, the body limit it reads under, the audit event it writes
and its OpenAPI operation. Routing (`http/dispatch.py`), auth, audit, the body limit
and `/openapi.json` all read these rows; `GRPC_METHODS` maps each V2 gRPC method to the same
scopes. No web framework here: handlers are named, each transport binds its own.

Templates are `/`-separated segments: a literal, `{param}`, `{param}:verb` (TF Serving's
`NAME:predict`) or `{param}:{param}`; `routing.RouteTable` matches paths against them.
A path no route serves needs the scope `UNROUTED` names for its prefix (so a token scoped to
a model gets that model's 404s), else admin on every model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from shipyard.security.tokens import Principal

Action = Literal["infer", "metadata", "admin"]
Target = Literal["path", "any", "all", "body"]
"""Which model a route's scope is about: the path's {name}, any one model, every model, or
any one at the gate and then the model its body names (checked by the handler)."""
BodyLimit = Literal["model", "server"]
"""Whose `max_body_bytes` a route's body is read under: its model's (model.toml) or the server's."""

ANY_MODEL = ""
"""Access target: a scope for the action on some model will do (server metadata)."""
ALL_MODELS = "*"
"""Access target: only a scope for the action on every model ('ACTION:*') will do."""


@dataclass(frozen=True)
class Access:
    """What a call needs: `action` ("infer", "metadata" or "admin") on `model`."""

    action: str
    model: str
    """A model name, ANY_MODEL or ALL_MODELS."""

    def describe(self) -> str:
        if self.model == ANY_MODEL:
            return f"{self.action} on any model"
        if self.model == ALL_MODELS:
            return f"{self.action} on every model (scope '{self.action}:*')"
        return f"{self.action} on model {self.model!r}"

    def granted_to(self, principal: Principal) -> bool:
        if self.model == ANY_MODEL:
            return any(s.action in (self.action, "admin") for s in principal.scopes)
        if self.model == ALL_MODELS:
            return any(
                s.action in (self.action, "admin") and s.pattern == "*" for s in principal.scopes
            )
        return principal.allows(self.action, self.model)

    @property
    def named_model(self) -> str | None:
        """The model this access names, None for ANY_MODEL / ALL_MODELS."""
        return None if self.model in (ANY_MODEL, ALL_MODELS) else self.model


EVERYTHING = Access("admin", ALL_MODELS)


@dataclass(frozen=True)
class Operation:
    """A route's OpenAPI operation (`openapi.py` renders it): what it takes and answers."""

    operation_id: str
    summary: str
    tag: str
    ok: str | None
    """Schema name of the 200 JSON body (None: described by `ok_content`)."""
    errors: tuple[int, ...] = ()
    body: str | None = None
    """Schema name of the JSON request body, if any."""
    body_required: bool = True
    binary: bool = False
    """Also takes and returns application/octet-stream (V2 binary tensor extension)."""
    false_status: str | None = None
    """Schema of the 400 body when 400 means 'false' (health), not an error."""
    ok_content: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    """One HTTP route."""

    method: str
    path: str
    handler: str
    """The handler's name; the transport that owns the prefix binds it."""
    action: Action | None
    """The scope's action; None for the open routes."""
    target: Target = "path"
    body: BodyLimit = "model"
    audit: str | None = None
    """The audit event of each call ("infer", "admin"); such calls fail closed (503) while
    the audit log cannot be written."""
    operation: Operation | None = None
    """None: served but not in /openapi.json (TF Serving's unsupported label paths)."""
    metrics: bool = False
    """The /metrics route: open when the server setting metrics_require_auth is false."""

    def access(self, params: dict[str, str]) -> Access | None:
        """What a call with these path parameters needs; None when open."""
        if self.action is None:
            return None
        if self.target == "path":
            return Access(self.action, params["name"])
        if self.target == "all":
            return Access(self.action, ALL_MODELS)
        return Access(self.action, ANY_MODEL)


_MODEL, _VERSIONED = "{name}", "{name}/versions/{version}"
_POST_MODEL = (400, 404, 413, 503)


def _per_version(prefix: str, rows: Callable[[str, str], list[Route]]) -> list[Route]:
    """`rows(base, id_suffix)` for PREFIX{name} and PREFIX{name}/versions/{version}."""
    pairs = (("", _MODEL), ("_version", _VERSIONED))
    return [route for suffix, middle in pairs for route in rows(prefix + middle, suffix)]


def _v2_model_routes(base: str, suffix: str) -> list[Route]:
    return [
            Route("GET", base, "v2.model_metadata", "metadata", operation=Operation(
                f"v2_model_metadata{suffix}", "Model metadata", "V2", "ModelMetadata",
                (404, 503))),
            Route("GET", f"{base}/ready", "v2.model_ready", "metadata", operation=Operation(
                f"v2_model_ready{suffix}", "Model ready (200) or not (400)", "V2", "ModelReady",
                (404,), false_status="ModelReady")),
            Route("POST", f"{base}/infer", "v2.infer", "infer", audit="infer",
                  operation=Operation(f"v2_infer{suffix}", "Inference", "V2",
                                      "InferenceResponse", (*_POST_MODEL, 504),
                                      body="InferenceRequest",
                                      binary=True)),
            Route("GET", f"{base}/stats", "v2.statistics", "metadata", operation=Operation(
                f"v2_model_stats{suffix}", "Model statistics", "V2", "Statistics", (404,))),
            Route("GET", f"{base}/config", "v2.model_config", "metadata", operation=Operation(
                f"v2_model_config{suffix}", "Model configuration (Triton's layout)", "V2",
                "ModelConfig", (404, 503))),
    ]  # fmt: skip


def _tf_routes(base: str, suffix: str) -> list[Route]:
    return [
            Route("GET", base, "tf.status", "metadata", operation=Operation(
                f"tf_model_status{suffix}", "Model status (all versions when none is named)",
                "TF Serving", "TfModelStatus", (404,))),
            Route("GET", f"{base}/metadata", "tf.metadata", "metadata", operation=Operation(
                f"tf_model_metadata{suffix}", "Model metadata (signature_def)", "TF Serving",
                "TfMetadata", (404, 503))),
            Route("POST", f"{base}:predict", "tf.predict", "infer", audit="infer",
                  operation=Operation(f"tf_predict{suffix}", "Predict (row or columnar format)",
                                      "TF Serving", "TfPredictResponse", _POST_MODEL,
                                      body="TfPredictRequest")),
            Route("POST", f"{base}:classify", "tf.classify", "infer", audit="infer",
                  operation=Operation(f"tf_classify{suffix}", "Classify examples (classifiers "
                                      "with `classes` metadata)", "TF Serving",
                                      "TfClassifyResponse", _POST_MODEL,
                                      body="TfExamplesRequest")),
            Route("POST", f"{base}:regress", "tf.regress", "infer", audit="infer",
                  operation=Operation(f"tf_regress{suffix}", "Regress examples (single-output "
                                      "regressors)", "TF Serving", "TfRegressResponse",
                                      _POST_MODEL, body="TfExamplesRequest")),
            # any other verb: 404 naming the three (GET too: the verb is wrong, not the method)
            Route("POST", f"{base}:{{verb}}", "tf.unknown_verb", "infer", audit="infer"),
            Route("GET", f"{base}:{{verb}}", "tf.unknown_verb", "infer", audit="infer"),
    ]  # fmt: skip


_LABELLED = "/v1/models/{name}/labels/{label}"
_TF_LABELS = [  # TF Serving's version labels: a 400 that says to name a version instead
    Route("GET", _LABELLED, "tf.labels", "metadata"),
    Route("GET", f"{_LABELLED}/metadata", "tf.labels", "metadata"),
    Route("POST", f"{_LABELLED}:{{verb}}", "tf.labels", "infer", audit="infer"),
]


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v2/health/live", "v2.live", None, target="any", body="server",
          operation=Operation("v2_live", "Server live", "V2", "Live")),
    Route("GET", "/v2/health/ready", "v2.ready", None, target="any", body="server",
          operation=Operation("v2_ready", "Server ready (200) or not (400)", "V2", "Ready",
                              false_status="Ready")),
    Route("GET", "/v2", "v2.server_metadata", "metadata", target="any", body="server",
          operation=Operation("v2_server_metadata", "Server metadata", "V2", "ServerMetadata")),
    Route("GET", "/v2/models/stats", "v2.statistics", "metadata", target="all", body="server",
          operation=Operation("v2_stats", "Statistics of every model", "V2", "Statistics")),
    *_per_version("/v2/models/", _v2_model_routes),
    Route("GET", "/v2/models/{name}/rollout", "v2.rollout", "metadata", operation=Operation(
        "v2_rollout", "Rollout status (Shipyard extension shipyard_rollout)", "V2", "Rollout",
        (404, 409))),
    Route("POST", "/v2/models/{name}/rollout/promote", "v2.rollout_promote", "admin",
          audit="admin", operation=Operation(
              "v2_rollout_promote", "Promote the rollout's candidate now", "V2", "Rollout",
              (400, 404, 409, 413), body="Empty", body_required=False)),
    Route("POST", "/v2/models/{name}/rollout/rollback", "v2.rollout_rollback", "admin",
          audit="admin", operation=Operation(
              "v2_rollout_rollback", "Roll the rollout's candidate back now", "V2", "Rollout",
              (400, 404, 409, 413), body="Empty", body_required=False)),
    Route("POST", "/v2/repository/index", "v2.repository_index", "admin", target="all",
          body="server", audit="admin",
          operation=Operation("v2_repository_index", "Repository index", "V2", None, (400, 413),
                              body="IndexRequest", body_required=False,
                              ok_content={"application/json": {"schema": {
                                  "type": "array",
                                  "items": {"$ref": "#/components/schemas/IndexEntry"}}}})),
    Route("POST", "/v2/repository/models/{name}/load", "v2.load", "admin", audit="admin",
          operation=Operation("v2_load", "Load or reload a model", "V2", "Empty", (400, 404, 413),
                              body="LoadRequest", body_required=False)),
    Route("POST", "/v2/repository/models/{name}/unload", "v2.unload", "admin", audit="admin",
          operation=Operation("v2_unload", "Unload a model", "V2", "Empty", (400, 404, 413),
                              body="LoadRequest", body_required=False)),
    *_per_version("/v1/models/", _tf_routes),
    *_TF_LABELS,
    Route("POST", "/v1/embeddings", "openai.embeddings", "infer", target="body", body="server",
          audit="infer",
          operation=Operation("openai_embeddings", "Sentence embeddings (OpenAI-compatible; "
                              "models whose processing embeds text)", "OpenAI",
                              "EmbeddingsResponse", (400, 404, 413, 503),
                              body="EmbeddingsRequest")),
    Route("GET", "/metrics", "metrics", "metadata", target="all", body="server", metrics=True,
          operation=Operation("metrics", "Prometheus metrics", "Operations", None,
                              ok_content={"text/plain": {"schema": {"type": "string"}}})),
    Route("GET", "/openapi.json", "openapi", "metadata", target="any", body="server",
          operation=Operation("openapi", "This OpenAPI document", "Operations", None,
                              ok_content={"application/json": {"schema": {"type": "object"}}})),
)  # fmt: skip


UNROUTED: tuple[tuple[str, Action], ...] = (
    ("/v2/models/", "metadata"),
    ("/v2/repository/models/", "admin"),
    ("/v1/models/", "metadata"),
)
"""Prefix -> the action a path under it that no route serves needs on the model its next
segment names (a token for that model then gets a 404, not a 403)."""


@dataclass(frozen=True)
class GrpcMethod:
    """What a V2 gRPC method needs: `action` on the model its message names, else on `default`."""

    action: Action | None
    """None: open (the health checks)."""
    default: str
    """ANY_MODEL or ALL_MODELS: the target when the message names no model."""
    audited: bool = False
    """Fails closed (UNAVAILABLE) while the audit log cannot be written."""

    def access(self, model: str | None) -> Access | None:
        if self.action is None:
            return None
        return Access(self.action, model or self.default)


GRPC_METHODS: dict[str, GrpcMethod] = {
    "ServerLive": GrpcMethod(None, ANY_MODEL),
    "ServerReady": GrpcMethod(None, ANY_MODEL),
    "ModelReady": GrpcMethod("metadata", ANY_MODEL),  # open when it names no model
    "ServerMetadata": GrpcMethod("metadata", ANY_MODEL),
    "ModelMetadata": GrpcMethod("metadata", ANY_MODEL),
    "ModelConfig": GrpcMethod("metadata", ANY_MODEL),
    "ModelInfer": GrpcMethod("infer", ALL_MODELS, audited=True),
    "ModelStreamInfer": GrpcMethod("infer", ALL_MODELS, audited=True),
    "ModelStatistics": GrpcMethod("metadata", ALL_MODELS),
    "RepositoryIndex": GrpcMethod("admin", ALL_MODELS, audited=True),
    "RepositoryModelLoad": GrpcMethod("admin", ALL_MODELS, audited=True),
    "RepositoryModelUnload": GrpcMethod("admin", ALL_MODELS, audited=True),
}
"""Every V2 gRPC method; `ModelReady` without a model is open, like the server health checks."""


def grpc_access(method: str, model: str | None) -> Access | None:
    """What a V2 gRPC call needs; None when open (unknown methods need admin on every model)."""
    spec = GRPC_METHODS.get(method)
    if spec is None:
        return EVERYTHING
    if method == "ModelReady" and not model:
        return None
    return spec.access(model)
