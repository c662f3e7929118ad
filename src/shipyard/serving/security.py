"""Access control for every transport: bearer tokens, a scope per action, default deny.

With `settings.auth` (a token file, `shipyard tokens create`) every HTTP route but
/v2/health/* needs `Authorization: Bearer <token>`, and one of the token's scopes
(`infer:iris`, `metadata:*`, `admin:fraud-*`; admin implies the others) must grant the
route's action on its model; the route table (`routes.ROUTES`, `routes.GRPC_METHODS`) says
which, the HTTP dispatcher and the gRPC servicer ask the `Guard` here:

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
    anything else under a model's prefix                the route's   that model
    anything else                                       admin     every

No token, or an unknown, revoked or expired one: 401 with `WWW-Authenticate: Bearer`; a
valid token without the scope: 403. gRPC calls `ServerSecurity.authorize(metadata, method,
model)` (the servicer's hook), which raises the same errors (UNAUTHENTICATED,
PERMISSION_DENIED) and returns who is calling; `ServerSecurity.authenticate` runs first, on
the metadata alone, before the call's message is read (`grpc.gate`). Every refusal is
written to the audit log when there is one.

`check_exposure` refuses to bind a non-loopback address without auth unless `insecure`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus

from starlette.types import Scope

from shipyard.errors import ShipyardError, UsageError
from shipyard.security.errors import AuthenticationError, PermissionDeniedError
from shipyard.security.tokens import Principal, Refusal, TokenInfo, TokenStore, bearer_token
from shipyard.serving.addresses import is_loopback
from shipyard.serving.audit_trail import AuditWriter
from shipyard.serving.calls import ANONYMOUS, SERVER
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.errors import AuditUnavailable
from shipyard.serving.http.common import client_of, header
from shipyard.serving.metrics import Metrics
from shipyard.serving.routes import ANY_MODEL, GRPC_METHODS, Access, grpc_access
from shipyard.serving.settings import ServerSettings

log = logging.getLogger("shipyard.serving.security")


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
            if self.audit is not None:
                self.audit.denied(
                    who=who,
                    status=int(exc.status),
                    model=access.named_model,
                    route=route,
                    client=client,
                    reason=exc.message,
                )
            raise
        return principal


@dataclass
class ServerSecurity:
    """The server's guard (None without auth) and audit writer (None without a log)."""

    settings: ServerSettings
    dataplane: DataPlane
    guard: Guard | None
    audit: AuditWriter | None

    def start(self) -> None:
        """Open the audit log (its chain continues) and note the start."""
        if self.guard is not None:
            self.dataplane.readiness_checks.append(self.guard.problem)
        if self.audit is not None:
            self.audit.attach(self.dataplane)  # readiness and metrics follow the log's health
            self.dataplane.events.listeners.append(self.audit.record)
            self.dataplane.events.backpressure.append(self.audit.wait_for_room)
            self.audit.start()
            self.audit.submit("server.start", who=SERVER, detail=self._describe_server())

    def stop(self) -> None:
        """Note the stop and write every queued audit record (blocks; run off the loop)."""
        if self.guard is not None and self.guard.problem in self.dataplane.readiness_checks:
            self.dataplane.readiness_checks.remove(self.guard.problem)
        if self.audit is not None:
            self.dataplane.events.listeners.remove(self.audit.record)
            self.dataplane.events.backpressure.remove(self.audit.wait_for_room)
            self.audit.submit("server.stop", who=SERVER)
            self.audit.close()

    async def authorize(
        self,
        metadata: Mapping[str, str],
        method: str,
        model: str | None,
        *,
        client: str | None = None,
    ) -> str:
        """The gRPC servicer's hook: who calls (a token name or ANONYMOUS) when `method` on
        `model` is allowed, else a 401/403 error (503 while audited calls cannot be logged)."""
        spec = GRPC_METHODS.get(method)
        if self.audit is not None and spec and spec.audited:
            refusal = self.audit.refusal()
            if refusal is not None:
                raise AuditUnavailable(refusal)  # fail closed, as over HTTP
        access = grpc_access(method, model)
        if self.guard is None or access is None:
            return ANONYMOUS
        principal = self.guard.check(
            metadata.get("authorization"),
            access,
            route=f"grpc {method}",
            client=client,
            protocol="grpc",
        )
        return principal.name

    async def authorize_http(self, scope: Scope, action: str, model: str) -> None:
        """For an HTTP route whose body names the model (/v1/embeddings): the caller's token
        must grant `action` on `model`; refusals are audited like the dispatcher's."""
        if self.guard is None:
            return
        self.guard.check(
            header(scope, b"authorization"),
            Access(action, model),
            route=f"{scope['method']} {scope['path']}",
            client=client_of(scope),
        )

    async def authenticate(
        self, metadata: Mapping[str, str], *, method: str, client: str | None
    ) -> None:
        """gRPC's check before the message is read (`grpc.gate`): a valid token that may do
        the method's action on some model; `authorize` checks the model the message names."""
        access = grpc_access(method, None)
        if self.guard is None or access is None:
            return
        self.guard.check(
            metadata.get("authorization"),
            Access(access.action, ANY_MODEL),
            route=f"grpc {method}",
            client=client,
            protocol="grpc",
        )

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
