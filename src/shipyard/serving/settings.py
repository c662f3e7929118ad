"""Typed server settings: environment `SHIPYARD_*`, an optional TOML file, keyword overrides.

Server settings come, highest precedence first, from keyword arguments, environment
variables (`SHIPYARD_PORT=9000`, nested with `__`: `SHIPYARD_BATCHING__MAX_BATCH_SIZE=64`),
a TOML file (`load_settings(config_file=...)` or `SHIPYARD_CONFIG_FILE`), then defaults.

Per-model settings (`model.toml`) are in `model_config`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from shipyard.errors import UsageError
from shipyard.package.remote import is_remote, repository_location
from shipyard.runtime.base import RuntimeOptions
from shipyard.serving.errors import ModelConfigError

CONFIG_FILE_ENV = "SHIPYARD_CONFIG_FILE"

_config_file: ContextVar[Path | None] = ContextVar("shipyard_config_file", default=None)


class BatchingSettings(BaseModel):
    """Dynamic batching knobs; the server's are the defaults for every model."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    enabled: bool | None = None
    """True/False forces batching on/off; None turns it on when the model has a batch dim."""
    max_batch_size: int = Field(default=32, ge=1)
    """Most rows (sum of dim 0 over requests) run in one batch."""
    max_queue_delay_us: int = Field(default=0, ge=0)
    """How long the oldest queued request may wait for batch-mates, in microseconds.

    0 adds no latency: batches then form from the requests that queue up while every
    worker is busy, so they grow with load.
    """
    max_queue_size: int = Field(default=1024, ge=1)
    """Requests waiting per model version beyond which new ones get 503 + Retry-After."""


class LimitsSettings(BaseModel):
    """Protection against oversized or abusive requests."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest accepted request body, after decompression, in bytes (413 above it)."""
    retry_after_s: int = Field(default=1, ge=1)
    """Seconds sent in `Retry-After` when a model's queue is full."""
    max_json_depth: int = Field(default=32, ge=4, le=1000)
    """Deepest nesting of a JSON request body (400 deeper); a rank-R tensor needs R + 3."""
    max_tensor_elements: int = Field(default=1 << 24, ge=1)
    """Most elements one input tensor may declare (413 above it)."""
    max_request_elements: int = Field(default=1 << 25, ge=1)
    """Most elements all input tensors of one request may declare together (413 above it)."""
    max_bytes_element: int = Field(default=1 << 20, ge=1)
    """Largest single BYTES (string) input element, in bytes (413 above it)."""
    max_output_bytes: int = Field(default=256 << 20, ge=1024)
    """Largest total size of a response's output tensors, in bytes (413 above it)."""


class HttpSettings(BaseModel):
    """Bounds on every HTTP connection, enforced before the app or auth sees a request.

    Defaults follow Triton and common proxies; see "What is bounded before authentication
    (HTTP)" in docs/security.md.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1 << 20)
    """Largest request line plus headers, in bytes (431 and the connection closed above it)."""
    max_header_fields: int = Field(default=100, ge=8, le=10_000)
    """Most header fields in one request (431 and the connection closed above it)."""
    header_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """Seconds a connection may take from opening (or from a request's first byte) to the
    end of its headers; a slower one is closed (408 if it sent anything)."""
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """Seconds a request body may go without a byte arriving while the server waits for it;
    the connection is then closed (408 if no response started)."""
    keep_alive_timeout_s: float = Field(default=5.0, gt=0, le=600)
    """Seconds an idle keep-alive connection stays open between requests."""
    max_connections: int = Field(default=1024, ge=1, le=1_000_000)
    """Most HTTP connections open at once; more are answered 503 and closed (keep the
    process's open-file limit, `ulimit -n`, above it)."""
    backlog: int = Field(default=2048, ge=1, le=65535)
    """Connections the kernel queues before the server accepts them (listen backlog)."""
    trusted_proxies: list[str] = Field(default_factory=list, max_length=256)
    """Addresses or networks (CIDR) of the reverse proxies whose `X-Forwarded-For` and
    `X-Forwarded-Proto` are believed: a request from one of them is logged and audited with
    the client address the proxy names. Empty (the default): the TCP peer's address, and the
    headers are ignored. "*" trusts every peer (only behind a proxy that strips them)."""
    balance: bool = True
    """Under `--workers`: a worker holding more than its share of the group's HTTP
    connections answers a request with `Connection: close` so that the client reconnects
    and the kernel spreads the connection again (SO_REUSEPORT hashes a few long-lived
    connections unevenly). False: connections stay where the kernel put them."""


class TlsSettings(BaseModel):
    """TLS beyond the certificate (`tls_cert`/`tls_key`): client certificates, versions, reload.

    One configuration for HTTPS and gRPC; see "TLS" in docs/security.md.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    client_ca: Path | None = None
    """PEM CA bundle: require a client certificate signed by it (mutual TLS) on HTTP and gRPC."""
    min_version: Literal["1.2", "1.3"] = "1.2"
    """Oldest TLS version HTTPS accepts; older clients fail the handshake. grpcio has no such
    option: gRPC accepts 1.2 and 1.3 whatever this says (logged at start when it is "1.3")."""
    ciphers: str | None = None
    """OpenSSL cipher list for HTTPS over TLS 1.2 (e.g. "ECDHE+AESGCM"); None = OpenSSL's
    defaults. TLS 1.3 suites are always OpenSSL's; gRPC reads $GRPC_SSL_CIPHER_SUITES."""
    reload_interval_s: float = Field(default=5.0, ge=0, le=3600)
    """Seconds between checks of the certificate, key and client-CA files; a changed set is
    loaded for new connections without a restart (0 = never reload)."""


class GrpcSettings(BaseModel):
    """Bounds on the V2 gRPC server (on when `grpc_port` is set)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    max_concurrent_rpcs: int = Field(default=256, ge=1, le=100_000)
    """Most gRPC calls handled at once over all connections; more are refused at once with
    RESOURCE_EXHAUSTED (each may hold up to `limits.max_body_bytes` once authenticated)."""
    max_concurrent_streams: int = Field(default=100, ge=1, le=10_000)
    """Most calls open at once on one HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS)."""
    bdp_probe: bool = False
    """Let grpc grow HTTP/2 flow-control windows to the measured bandwidth-delay product:
    faster big messages over high-latency links, but each call refused before its message
    is read may then buffer a few MiB first (off: 64 KiB windows; see docs/security.md)."""


class DriftSettings(BaseModel):
    """Drift measured against each version's reference profile (see docs/monitoring.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    enabled: bool = False
    """Sample decoded inputs and outputs and export `shipyard_drift_*` gauges; versions
    without a reference profile are skipped (logged)."""
    sample_rate: float = Field(default=0.1, gt=0, le=1)
    """Fraction of successful requests whose rows join the window."""
    window: int = Field(default=1000, ge=10, le=10_000_000)
    """Rows (of sampled requests) the drift values are computed on: the most recent ones."""


class RaySettings(BaseModel):
    """Ray Serve as the replica pool (`shipyard deploy ray`; serving.ray_pool, docs/deploy.md).

    Shipyard's own HTTP and gRPC server stays the front door (auth, limits, batching,
    processing, audit, metrics); each model version is one Ray Serve deployment whose
    replicas load the version themselves and run its batches. A model.toml [ray] overrides
    single knobs per model."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    address: str | None = None
    """Ray cluster to join ("auto", "ray://HEAD:10001", "HEAD:6379"); None starts a local
    cluster on this machine, bound to 127.0.0.1, and stops it when the server exits."""
    replicas: int = Field(default=1, ge=1, le=1024)
    """Replicas per model version (without autoscaling)."""
    min_replicas: int | None = Field(default=None, ge=0, le=1024)
    """With `max_replicas`: Ray Serve autoscales each deployment between the two."""
    max_replicas: int | None = Field(default=None, ge=1, le=1024)
    target_ongoing_requests: float = Field(default=2.0, gt=0, le=1024)
    """Autoscaling target: batches in flight per replica."""
    num_cpus: float = Field(default=1.0, gt=0, le=1024)
    """CPUs Ray reserves per replica (fractions allowed); ONNX Runtime in a replica uses
    this many threads (rounded up) unless [runtime] intra_op_threads says otherwise."""
    max_ongoing_requests: int = Field(default=4, ge=1, le=10_000)
    """Batches one replica runs or holds at once; more wait in Ray Serve's router."""
    execution_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """A batch not answered by then fails with 503 (the call is cancelled)."""
    start_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    """Seconds a version's deployment may take to have every replica loaded."""
    host: str = "127.0.0.1"
    """Address the local cluster's processes bind (with `address` None)."""

    @model_validator(mode="after")
    def _autoscaling_bounds(self) -> RaySettings:
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("autoscaling needs both min_replicas and max_replicas")
        low, high = self.min_replicas, self.max_replicas
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_replicas = {low} is above max_replicas = {high}")
        return self

    @property
    def most_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas


class ServerSettings(BaseSettings):
    """Everything `shipyard serve` can be told; see the module docstring for sources."""

    model_config = SettingsConfigDict(
        env_prefix="SHIPYARD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    host: str = "127.0.0.1"
    """Interface to bind; use 0.0.0.0 to accept connections from other machines."""
    port: int = Field(default=8000, ge=0, le=65535)
    """HTTP port; 0 picks a free one (reported once the server is up)."""
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    """V2 gRPC port (inference.GRPCInferenceService, e.g. 8001); None = off, 0 = a free one."""
    repository: Annotated[Path | str, BeforeValidator(repository_location)] = Path("models")
    """The model repository folder: REPO/NAME/VERSION/{manifest.json, model.onnx}; or an
    `s3://bucket/prefix` URL, mirrored into `repository_cache` and served from there."""
    repository_cache: Path | None = None
    """Where an s3:// repository is mirrored (a folder per URL); None =
    $XDG_CACHE_HOME/shipyard/remote, else ~/.cache/shipyard/remote."""
    batching: BatchingSettings = BatchingSettings()
    """Default batching for every model; a model's model.toml overrides single knobs."""
    instances: int = Field(default=1, ge=1, le=64)
    """Default worker threads per model version (batches run concurrently)."""
    max_instances: int = Field(default=16, ge=1, le=64)
    """Most worker threads a model.toml may ask for (`instances`); a config above it is
    refused with the reason in the repository index, and the previous config keeps serving."""
    warmup: bool = True
    """Run a version's stored sample (else inputs synthesized from its graph) before it takes
    traffic; a model's `warmup = "strict"` also refuses it when synthesized inputs fail."""
    runtime: RuntimeOptions = RuntimeOptions()
    """Default ONNX Runtime options (threads, graph optimization, providers)."""
    public_key: Path | None = None
    """Serve only versions whose model.sig verifies with this public key; others are refused.

    Encrypted packages are decrypted with the key-encryption key of `key_file`, else the
    one in $SHIPYARD_KEK."""
    workers: int = Field(default=1, ge=1, le=64)
    """Server processes sharing the HTTP (and gRPC) port through SO_REUSEPORT, so the kernel
    spreads connections over every core; one /metrics sums them all (docs/serving.md,
    "Workers"). 1: this process serves alone."""
    ray: RaySettings | None = None
    """Run every model version on Ray Serve replicas behind this server (`shipyard deploy
    ray`); None: versions run in this process (or their worker, isolation = "process").
    A model.toml `isolation` other than "ray" keeps that model here."""
    poll_interval_s: float = Field(default=2.0, ge=0)
    """Seconds between repository scans for new, changed or removed versions; 0 = off."""
    strict_readiness: bool = True
    """Server ready only when every model (not unloaded on request) has a READY version."""
    shutdown_delay_s: float = Field(default=0.0, ge=0, le=3600)
    """Seconds `shipyard serve` keeps answering after SIGTERM or SIGINT, with readiness
    already 503, before its listeners close: time for a load balancer (Kubernetes
    endpoints) to stop sending it traffic; 5 suits most clusters (see "Shutting down")."""
    drain_timeout_s: float = Field(default=25.0, ge=0, le=3600)
    """Seconds in-flight HTTP requests and gRPC calls get to finish once the listeners
    close (on a signal or any stop); later ones are cut. HTTP counts whole seconds (rounded
    up). Keep `shutdown_delay_s` + this under Kubernetes' terminationGracePeriodSeconds."""
    log_format: Literal["text", "json"] = "text"
    """Log lines as plain text or as one JSON object per line."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level logged by `serve()`."""
    compress_min_bytes: int = Field(default=64 * 1024, ge=0)
    """Gzip/deflate responses at least this large when the client accepts it (0 = all)."""
    access_log: bool = False
    """Log one line per HTTP request (method, path, status, duration, request id). V2
    inference then goes through the app's middleware instead of being answered from the
    protocol: about a tenth more CPU per request for a small model (docs/performance.md)."""
    limits: LimitsSettings = LimitsSettings()
    """Request size limits and overload behaviour."""
    http: HttpSettings = HttpSettings()
    """Header size, header and body timeouts, keep-alive and connection cap (HTTP)."""
    auth: Path | None = None
    """Token file (`shipyard tokens create`): every route but /v2/health/* then needs a token."""
    metrics_require_auth: bool = True
    """With `auth`, /metrics needs a token with a metadata scope for every model."""
    insecure: bool = False
    """Allow binding a non-loopback address without `auth` (refused otherwise)."""
    tls_cert: Path | None = None
    """PEM certificate (chain) to serve HTTPS with; needs `tls_key`."""
    tls_key: Path | None = None
    """PEM private key of `tls_cert`."""
    tls: TlsSettings = TlsSettings()
    """Mutual TLS, minimum version, ciphers and certificate reload (needs `tls_cert`)."""
    grpc: GrpcSettings = GrpcSettings()
    """Concurrency bounds of the V2 gRPC server."""
    drift: DriftSettings = DriftSettings()
    """Drift against reference profiles (off by default; a model.toml [drift] overrides)."""
    require_signature: bool = False
    """Refuse every version without a valid signature; needs `public_key`."""
    key_file: Path | None = None
    """Key-encryption key for encrypted packages (read once at start), else $SHIPYARD_KEK."""
    audit_log: Path | None = None
    """Append a chained, HMAC-signed JSON-lines audit record per security-relevant event."""
    audit_key_file: Path | None = None
    """The audit log's HMAC key, else $SHIPYARD_AUDIT_KEY; must differ from the KEK."""
    audit_new_chain: bool = False
    """At start, when the audit log's chain does not verify, move the file aside and start a
    new chain whose first record names the problem (default: refuse to start)."""
    audit_queue_size: int = Field(default=10_000, ge=1, le=10_000_000)
    """Audit records that may wait in memory for a slow disk; past it audited calls wait for
    room before they answer (backpressure: no record is ever dropped)."""
    allow_downgrade: bool = False
    """With `require_signature`: serve a version older than the highest one this server has
    served for that model (after a model.toml policy change or a removed folder); refused
    otherwise, unless an operator loads the model explicitly."""

    @model_validator(mode="after")
    def _tls_options_need_a_certificate(self) -> ServerSettings:
        if self.tls_cert is None and self.tls != TlsSettings():
            raise ValueError(
                "TLS options (tls.client_ca, tls.min_version, tls.ciphers, tls.reload_interval_s)"
                " need a certificate: pass --tls-cert and --tls-key"
            )
        return self

    @model_validator(mode="after")
    def _security_options_fit(self) -> ServerSettings:
        if self.require_signature and self.public_key is None:
            raise ValueError(
                "require_signature needs public_key: pass --pub KEY (the signer's public key)"
            )
        if self.instances > self.max_instances:
            raise ValueError(
                f"instances = {self.instances} is above max_instances = {self.max_instances}"
            )
        if self.ray is not None and self.workers > 1:
            raise ValueError(
                "ray runs one front door: drop --workers and scale with --replicas or "
                "--autoscale (Ray Serve spreads the batches over its replicas)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key (--tls-cert and --tls-key)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> ServerSettings:
    """Settings from keyword overrides > environment > TOML file > defaults.

    The TOML file is `config_file`, else the path in `SHIPYARD_CONFIG_FILE`, else none.
    """
    chosen = config_file or os.environ.get(CONFIG_FILE_ENV) or None
    path = Path(chosen) if chosen else None
    if path is not None and not path.is_file():
        raise ModelConfigError(f"{path}: settings file not found")
    with _using_config_file(path):
        try:
            return ServerSettings(**overrides)
        except ValidationError as exc:
            source = f"{path}: " if path else ""
            raise ModelConfigError(
                f"{source}invalid server settings ({validation_details(exc)})"
            ) from exc


class RepositoryNotFoundError(UsageError):
    """The repository folder to serve does not exist (an empty one is fine: models come later)."""


def check_repository(settings: ServerSettings) -> Path | str:
    """The repository folder of `settings`; raises RepositoryNotFoundError unless it is a folder.

    Serving a path that does not exist would report ready with zero models, which hides a
    typo; an existing empty folder is served (versions copied in later are picked up). An
    s3:// repository must name a bucket these credentials may list (RemoteError otherwise).
    """
    path = settings.repository
    if isinstance(path, str):
        if is_remote(path):
            from shipyard.package.remote import RemoteRepository

            RemoteRepository(path).check()
            return path
        path = Path(path)
    shown = f"{path}/" if not str(path).endswith("/") else str(path)
    if not path.exists():
        raise RepositoryNotFoundError(
            f"{shown}: no such model repository (create it or pass the folder that holds "
            "NAME/VERSION/ folders)"
        )
    if not path.is_dir():
        raise RepositoryNotFoundError(
            f"{path}: not a folder; pass the model repository folder that holds NAME/VERSION/ "
            "folders"
        )
    return path


@contextmanager
def _using_config_file(path: Path | None) -> Iterator[None]:
    token = _config_file.set(path)
    try:
        yield
    finally:
        _config_file.reset(token)


def validation_details(exc: ValidationError) -> str:
    """A pydantic error as `field.path: message; ...` (the first five), for one-line errors."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}"
        for err in exc.errors()[:5]
    )
