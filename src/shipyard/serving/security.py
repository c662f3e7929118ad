"""Access control for every transport: bearer tokens, a scope per action, default deny.

With `settings.auth` (a token file, `shipyard tokens create`) every HTTP route but
/v2/health/* needs `Authorization: Bearer <token>`, and one of the token's scopes
(`infer:iris`, `metadata:*`, `admin:fraud-*`; admin implies the others) must grant the
route's action on its model:

    route                                               action    model
    /v2/health/live, /v2/health/ready                   open
    /v2, /openapi.json                                  metadata  any one
    /v2/models/NAME[/versions/N][/ready|/stats|/config] metadata  NAME
    /v2/models/NAME[/versions/N]/infer                  infer     NAME
    /v2/models/stats, /metrics                          metadata  every ('metadata:*')
    /v2/repository/models/NAME/load|unload              admin     NAME
    /v2/repository/index                                admin     every ('admin:*')
    /v1/models/NAME[/versions/N][/metadata]             metadata  NAME
    /v1/models/NAME[/versions/N]:predict|classify|regress infer   NAME
    /v1/embeddings                                      infer     any one, then the body's
                                                                  model (authorize_http)
    anything else                                       admin     every

No token, or an unknown, revoked or expired one: 401 with `WWW-Authenticate: Bearer`; a
valid token without the scope: 403. Routes are classified here from the raw path, so the
rule holds whichever router serves them. gRPC calls `ServerSecurity.authorize(metadata,
action, model)` (the servicer's hook), which raises the same errors (UNAUTHENTICATED,
PERMISSION_DENIED); `ServerSecurity.authenticate` runs first, on the metadata alone, before
the call's message is read (`grpc_gate`). Every refusal is written to the audit log when there is one.

`check_exposure` refuses to bind a non-loopback address without auth unless `insecure`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from shipyard.errors import ShipyardError, UsageError
from shipyard.security.errors import AuthenticationError, PermissionDeniedError
from shipyard.security.tokens import Principal, Refusal, TokenInfo, TokenStore, bearer_token
from shipyard.serving.audit import (
    ANONYMOUS,
    SERVER,
    AuditMiddleware,
    AuditWriter,
    CallInfo,
    caller,
    current_call,
)
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.errors import AuditUnavailable
from shipyard.serving.limits import BodyLimitMiddleware
from shipyard.serving.metrics import Metrics
from shipyard.serving.protocols.http import error_response
from shipyard.serving.settings import ServerSettings

log = logging.getLogger("shipyard.serving.security")

ANY_MODEL = ""
"""Access target: a scope for the action on some model will do (server metadata)."""
ALL_MODELS = "*"
"""Access target: only a scope for the action on every model ('ACTION:*') will do."""

_V1_MODELS = "/v1/models/"
_EMBEDDINGS = "/v1/embeddings"
_INFER_TAILS = frozenset({"infer", "generate", "generate_stream"})


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


EVERYTHING = Access("admin", ALL_MODELS)


def route_access(path: str, *, metrics_require_auth: bool = True) -> Access | None:
    """What an HTTP path needs (see the module docstring); None for the open routes."""
    if path.startswith(_V1_MODELS):
        rest = path[len(_V1_MODELS) :]
        name = rest.split("/", 1)[0].split(":", 1)[0]
        if not name:
            return EVERYTHING
        return Access("infer" if ":" in rest else "metadata", name)
    if path == _EMBEDDINGS:
        return Access("infer", ANY_MODEL)  # the body names the model: checked by the route
    parts = path.split("/")
    if path == "/metrics":
        return Access("metadata", ALL_MODELS) if metrics_require_auth else None
    if path in ("/v2", "/openapi.json"):
        return Access("metadata", ANY_MODEL)
    if len(parts) < 3 or parts[0] != "" or parts[1] != "v2":
        return EVERYTHING
    if parts[2] == "health" and len(parts) == 4 and parts[3] in ("live", "ready"):
        return None
    if parts[2] == "models" and len(parts) >= 4 and parts[3]:
        if len(parts) == 4 and parts[3] == "stats":
            return Access("metadata", ALL_MODELS)
        action = "infer" if len(parts) > 4 and parts[-1] in _INFER_TAILS else "metadata"
        return Access(action, parts[3])
    if parts[2] == "repository":
        if len(parts) >= 5 and parts[3] == "models" and parts[4]:
            return Access("admin", parts[4])
        return EVERYTHING
    return EVERYTHING


def grpc_access(action: str, model: str | None) -> Access | None:
    """What a V2 gRPC call needs, from the servicer's action names; None when open."""
    if action == "health":
        return None if not model else Access("metadata", model)
    if action == "metadata":
        return Access("metadata", model or ANY_MODEL)
    if action == "statistics":
        return Access("metadata", model or ALL_MODELS)
    if action in ("repository", "admin"):
        return Access("admin", model or ALL_MODELS)
    if action == "infer":
        return Access("infer", model or ALL_MODELS)
    return EVERYTHING


class TokenStoreUnavailable(ShipyardError):
    """The token file cannot be read: every call is refused until it is fixed."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class Guard:
    """Checks bearer tokens against a `TokenStore`, auditing every refusal."""

    def __init__(
        self,
        tokens: TokenStore,
        *,
        audit: AuditWriter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.tokens = tokens
        self.audit = audit
        self.metrics = metrics
        if audit is not None:
            tokens.on_revoke.append(self._audit_revocation)

    def problem(self) -> str | None:
        """Why auth cannot work now (the token file is unreadable, malformed or too open),
        else None; readiness reports it, since every call would be refused with a 503."""
        try:
            self.tokens.list()
        except UsageError as exc:
            return f"authentication unavailable: {exc}"
        return None

    def _audit_revocation(self, info: TokenInfo) -> None:
        """A revocation made in the token file (`shipyard tokens revoke`) while serving."""
        assert self.audit is not None
        when = info.revoked_at.isoformat() if info.revoked_at else "?"
        self.audit.submit(
            "token.revoke",
            who=info.revoked_by or "unknown",
            detail=f"token {info.name!r} revoked at {when} (seen in {self.tokens.path})",
        )

    @classmethod
    def from_settings(
        cls,
        settings: ServerSettings,
        *,
        audit: AuditWriter | None,
        metrics: Metrics | None = None,
    ) -> Guard | None:
        """The guard for settings.auth (None when unset); the token file must be readable
        and private (mode 0600: InsecurePermissionsError, exit 2, otherwise)."""
        if settings.auth is None:
            return None
        if not settings.auth.is_file():
            raise UsageError(
                f"{settings.auth}: token file not found; create tokens with "
                f"`shipyard tokens create --name NAME --scope infer:MODEL --file {settings.auth}`"
            )
        tokens = TokenStore(settings.auth)
        tokens.list()  # a malformed or group/other-accessible file fails here, at startup
        return cls(tokens, audit=audit, metrics=metrics)

    def check(
        self,
        authorization: str | None,
        access: Access,
        *,
        route: str,
        client: str | None,
        protocol: str = "http",
    ) -> Principal:
        """The caller's principal; AuthenticationError (401) or PermissionDeniedError (403)."""
        who = ANONYMOUS
        reason: Refusal = "missing_token"
        try:
            token = bearer_token(authorization)
            if token is None:
                raise AuthenticationError(
                    "missing credentials: send 'Authorization: Bearer <token>'"
                )
            try:
                verdict = self.tokens.verify(token)
            except UsageError as exc:
                log.error("cannot read the token file: %s", exc)
                raise TokenStoreUnavailable(
                    "the server cannot read its token file; ask its operator"
                ) from None
            principal = verdict.principal
            if principal is None:
                reason = verdict.reason or "invalid_token"
                raise AuthenticationError("invalid, revoked or expired token")
            who = principal.name
            if not access.granted_to(principal):
                reason = "insufficient_scope"
                raise PermissionDeniedError(f"token {principal.name!r} may not {access.describe()}")
        except (AuthenticationError, PermissionDeniedError) as exc:
            if self.metrics is not None:
                self.metrics.observe_auth_failure(reason=reason, protocol=protocol)
            caller().denied = True
            if self.audit is not None:
                self.audit.denied(
                    who=who,
                    status=int(exc.status),
                    model=access.model if access.model not in (ANY_MODEL, ALL_MODELS) else None,
                    route=route,
                    client=client,
                    reason=exc.message,
                )
            raise
        caller().who = principal.name
        return principal


class AuthMiddleware:
    """Default deny for HTTP: each route needs the token scope `route_access` names."""

    def __init__(self, app: ASGIApp, *, guard: Guard, metrics_require_auth: bool = True) -> None:
        self.app = app
        self.guard = guard
        self.metrics_require_auth = metrics_require_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        access = route_access(path, metrics_require_auth=self.metrics_require_auth)
        if access is None:
            await self.app(scope, receive, send)
            return
        authorization = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = bytes(value).decode("latin-1")
                break
        token = current_call.set(CallInfo()) if current_call.get() is None else None
        try:
            await self._check_then_call(scope, receive, send, access, authorization)
        finally:
            if token is not None:
                current_call.reset(token)

    async def _check_then_call(
        self, scope: Scope, receive: Receive, send: Send, access: Access, authorization: str | None
    ) -> None:
        path = scope["path"]
        try:
            principal = self.guard.check(
                authorization, access, route=f"{scope['method']} {path}", client=_client(scope)
            )
        except ShipyardError as exc:
            response = error_response(exc)
            if exc.status == HTTPStatus.UNAUTHORIZED:
                response.headers["WWW-Authenticate"] = 'Bearer realm="shipyard"'
            elif exc.status == HTTPStatus.FORBIDDEN:
                response.headers["WWW-Authenticate"] = (
                    'Bearer realm="shipyard", error="insufficient_scope"'
                )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


@dataclass
class ServerSecurity:
    """The server's guard (None without auth) and audit writer (None without a log)."""

    settings: ServerSettings
    dataplane: DataPlane
    guard: Guard | None
    audit: AuditWriter | None
    _described: dict[str, tuple[str | None, str | None]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """path -> (action, model), memoised: asked for on every request (body limit, audit)."""

    def middleware(self) -> list[Middleware]:
        """Audit (outermost), auth, then the body limit; after the request-id middleware."""
        stack: list[Middleware] = []
        if self.audit is not None:
            stack.append(Middleware(AuditMiddleware, writer=self.audit, describe=self._describe))
        if self.guard is not None:
            stack.append(
                Middleware(
                    AuthMiddleware,
                    guard=self.guard,
                    metrics_require_auth=self.settings.metrics_require_auth,
                )
            )
        stack.append(Middleware(BodyLimitMiddleware, limit_for=self._body_limit))
        return stack

    def start(self) -> None:
        """Open the audit log (its chain continues) and note the start."""
        if self.guard is not None:
            self.dataplane.readiness_checks.append(self.guard.problem)
        if self.audit is not None:
            self.audit.attach(self.dataplane)  # readiness and metrics follow the log's health
            self.dataplane.manager.listeners.append(self.audit.model_event)
            self.dataplane.listeners.append(self.audit.inference_event)
            self.audit.start()
            self.audit.submit("server.start", who=SERVER, detail=self._describe_server())

    def stop(self) -> None:
        """Note the stop and write every queued audit record (blocks; run off the loop)."""
        if self.guard is not None and self.guard.problem in self.dataplane.readiness_checks:
            self.dataplane.readiness_checks.remove(self.guard.problem)
        if self.audit is not None:
            self.dataplane.manager.listeners.remove(self.audit.model_event)
            self.dataplane.listeners.remove(self.audit.inference_event)
            self.audit.submit("server.stop", who=SERVER)
            self.audit.close()

    async def authorize(self, metadata: Mapping[str, str], action: str, model: str | None) -> None:
        """The gRPC servicer's hook: returns when allowed, else raises a 401/403 error."""
        caller()  # this RPC's call info, so its infer record names the token
        if (
            self.audit is not None
            and self.audit.problem is not None
            and action in ("infer", "repository", "admin")
        ):
            raise AuditUnavailable(self.audit.problem)  # fail closed, as over HTTP
        access = grpc_access(action, model)
        if self.guard is None or access is None:
            return
        self.guard.check(
            metadata.get("authorization"),
            access,
            route=f"grpc {action}",
            client=caller().client,
            protocol="grpc",
        )

    async def authorize_http(self, scope: Scope, action: str, model: str) -> None:
        """For an HTTP route whose body names the model (/v1/embeddings): the caller's token
        must grant `action` on `model`; refusals are audited like the middleware's."""
        if self.guard is None:
            return
        authorization = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = bytes(value).decode("latin-1")
                break
        self.guard.check(
            authorization,
            Access(action, model),
            route=f"{scope['method']} {scope['path']}",
            client=_client(scope),
        )

    async def authenticate(
        self, metadata: Mapping[str, str], *, method: str, action: str, client: str | None
    ) -> None:
        """gRPC's check before the message is read (`grpc_gate`): a valid token that may do
        the action on some model; `authorize` checks the model the message names after."""
        access = grpc_access(action, None)
        if self.guard is None or access is None:
            return
        self.guard.check(
            metadata.get("authorization"),
            Access(access.action, ANY_MODEL),
            route=f"grpc {method}",
            client=client,
            protocol="grpc",
        )

    def _describe(self, path: str) -> tuple[str | None, str | None]:
        described = self._described.get(path)
        if described is not None:
            return described
        access = route_access(path, metrics_require_auth=self.settings.metrics_require_auth)
        if access is None:
            described = None, None
        else:
            model = access.model if access.model not in (ANY_MODEL, ALL_MODELS) else None
            described = access.action, model
        if len(self._described) >= 4096:  # paths come from clients: keep the memo bounded
            self._described.clear()
        self._described[path] = described
        return described

    def _body_limit(self, path: str) -> int:
        return self.dataplane.limits_for(self._describe(path)[1]).max_body_bytes

    def _describe_server(self) -> str:
        s = self.settings
        return (
            f"{s.host}:{s.port} auth={'on' if s.auth else 'off'} "
            f"tls={'on' if s.tls_cert else 'off'} signatures="
            f"{'required' if s.public_key else 'off'}"
        )


def build_security(settings: ServerSettings, dataplane: DataPlane) -> ServerSecurity:
    """Guard and audit writer for `settings`; key and token files are checked here."""
    audit = AuditWriter.from_settings(settings)
    guard = Guard.from_settings(settings, audit=audit, metrics=dataplane.metrics)
    return ServerSecurity(settings, dataplane, guard, audit)


def check_exposure(settings: ServerSettings) -> None:
    """UsageError when a non-loopback address would be served without auth (and not insecure)."""
    if settings.auth is not None or settings.insecure or is_loopback(settings.host):
        return
    raise UsageError(
        f"refusing to serve on {settings.host or 'all interfaces'} without authentication: "
        "anyone who can reach it could run and manage models; pass --auth TOKENS.json "
        "(shipyard tokens create), bind 127.0.0.1, or pass --insecure to accept the risk"
    )


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def _client(scope: Scope) -> str | None:
    client: Any = scope.get("client")
    if not client:
        return None
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
