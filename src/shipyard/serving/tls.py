"""TLS for both transports from one set of files: an SSLContext for HTTPS, credentials for gRPC.

`ServerTls` reads the certificate chain, its key and the optional client CA bundle (mutual
TLS), checks them with `cryptography` so a bad file stops the start with one line naming it,
and reloads them without a restart: at most every `reload_interval_s`, the first handshake
after a change re-reads the files (by mtime, size and inode) and, when the new set is good,
every later connection uses it; a bad or half-written set is logged and the old one kept.

    HTTPS  a front SSLContext given to uvicorn; its `sni_callback` (run on every ClientHello,
           SNI or not) switches the connection to the context built from the newest files
    gRPC   `grpc.dynamic_ssl_server_credentials`, whose fetcher grpc calls before every
           handshake; it returns the newest configuration once per change

grpcio offers no minimum-version or cipher option: gRPC accepts TLS 1.2 and 1.3 with its
own cipher list (`$GRPC_SSL_CIPHER_SUITES`), whatever `tls.min_version`/`tls.ciphers` say.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from shipyard.errors import ShipyardError
from shipyard.serving.settings import ServerSettings

log = logging.getLogger("shipyard.serving.tls")

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsFileError(ShipyardError):
    """A certificate, key or CA file cannot be used; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    """The PEM bytes of one consistent set of files, checked."""

    cert: bytes
    key: bytes
    client_ca: bytes | None
    stamp: tuple[tuple[int, int, int], ...]
    """(mtime_ns, size, inode) of each file when it was read."""
    serial: int
    """Serial number of the leaf certificate (for the log)."""


def read_files(cert: Path, key: Path, client_ca: Path | None) -> TlsFiles:
    """Read and check the files; TlsFileError naming the first one that is unusable."""
    paths = [cert, key] + ([client_ca] if client_ca is not None else [])
    stamp = tuple(_stamp(p) for p in paths)
    cert_pem, key_pem = _read(cert), _read(key)
    ca_pem = _read(client_ca) if client_ca is not None else None
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsFileError(f"{cert}: not a PEM certificate (chain)") from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsFileError(f"{key}: the private key is encrypted; store it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFileError(f"{key}: not a PEM private key") from None
    if _public(private.public_key()) != _public(chain[0].public_key()):
        raise TlsFileError(f"{key}: this key does not belong to the certificate in {cert}")
    if ca_pem is not None:
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise TlsFileError(f"{client_ca}: not a PEM CA certificate bundle") from None
    return TlsFiles(cert_pem, key_pem, ca_pem, stamp, chain[0].serial_number)


class ServerTls:
    """The server's TLS files, reloaded when they change; see the module docstring."""

    def __init__(
        self,
        *,
        cert: Path,
        key: Path,
        client_ca: Path | None = None,
        min_version: str = "1.2",
        ciphers: str | None = None,
        reload_interval_s: float = 5.0,
    ) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.min_version = min_version
        self.ciphers = ciphers
        self.reload_interval_s = reload_interval_s
        self.alpn: list[str] | None = None
        self._lock = threading.Lock()
        self._files = read_files(cert, key, client_ca)
        self._context = self._build_context(self._files)  # fails here, at start, if unusable
        self._checked = time.monotonic()
        self.generation = 0
        """Incremented each time a changed set of files is loaded."""

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ServerTls | None:
        """The TLS of settings.tls_cert/tls_key/tls (None without a certificate)."""
        if settings.tls_cert is None or settings.tls_key is None:
            return None
        return cls(
            cert=settings.tls_cert,
            key=settings.tls_key,
            client_ca=settings.tls.client_ca,
            min_version=settings.tls.min_version,
            ciphers=settings.tls.ciphers,
            reload_interval_s=settings.tls.reload_interval_s,
        )

    @property
    def files(self) -> TlsFiles:
        return self._files

    # -- HTTPS ----------------------------------------------------------------------------

    def ssl_context(self, *, alpn: list[str] | None = None) -> ssl.SSLContext:
        """The context to serve HTTPS with; each new connection gets the newest files."""
        self.alpn = alpn
        front = self._build_context(self._files)

        def on_client_hello(conn: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
            self.reload_if_changed()
            current = self._context
            if conn.context is not current:
                conn.context = current

        front.sni_callback = on_client_hello
        self._context = front
        return front

    def uvicorn_factory(self, config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        """`uvicorn.Config(ssl_context_factory=...)`: our context, with uvicorn's ALPN list."""
        return self.ssl_context(alpn=getattr(config.http_protocol_class, "alpn_protocols", None))

    # -- gRPC -----------------------------------------------------------------------------

    def grpc_credentials(self) -> Any:
        """gRPC server credentials that follow the files (client certificates with client_ca)."""
        import grpc

        seen = self.generation

        def fetch() -> Any:
            nonlocal seen
            self.reload_if_changed()
            if self.generation == seen:
                return None
            seen = self.generation
            return self._grpc_config(self._files)

        return grpc.dynamic_ssl_server_credentials(
            self._grpc_config(self._files),
            fetch,
            require_client_authentication=self.client_ca is not None,
        )

    # -- reload ---------------------------------------------------------------------------

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed (checked at most every reload_interval_s)."""
        if self.reload_interval_s <= 0:
            return False
        with self._lock:
            now = time.monotonic()
            if now - self._checked < self.reload_interval_s:
                return False
            self._checked = now
            paths = [self.cert, self.key] + ([self.client_ca] if self.client_ca else [])
            try:
                stamp = tuple(_stamp(p) for p in paths)
                if stamp == self._files.stamp:
                    return False
                files = read_files(self.cert, self.key, self.client_ca)
                context = self._build_context(files)
                if tuple(_stamp(p) for p in paths) != files.stamp:
                    return False  # replaced while being read: load it at the next check
            except ShipyardError as exc:
                log.warning(
                    "TLS files changed but cannot be loaded (keeping the old ones): %s", exc
                )
                return False
            self._files, self._context = files, context
            self.generation += 1
        log.info("TLS certificate reloaded from %s (serial %x)", self.cert, files.serial)
        return True

    def _build_context(self, files: TlsFiles) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _VERSIONS[self.min_version]
        if self.ciphers:
            try:
                context.set_ciphers(self.ciphers)
            except ssl.SSLError:
                raise TlsFileError(
                    f"tls.ciphers {self.ciphers!r}: OpenSSL knows no cipher in this list"
                ) from None
        if self.alpn:
            context.set_alpn_protocols(self.alpn)
        _load_chain(context, files, self.cert, self.key)
        if files.client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            try:
                context.load_verify_locations(cadata=files.client_ca.decode("ascii"))
            except (ssl.SSLError, UnicodeDecodeError):
                raise TlsFileError(f"{self.client_ca}: OpenSSL cannot use this CA bundle") from None
        return context

    @staticmethod
    def _grpc_config(files: TlsFiles) -> Any:
        import grpc

        return grpc.ssl_server_certificate_configuration(
            [(files.key, files.cert)], root_certificates=files.client_ca
        )


def _load_chain(context: ssl.SSLContext, files: TlsFiles, cert: Path, key: Path) -> None:
    # load_cert_chain takes only paths: what it reads may be newer than the checked bytes,
    # so a reload compares the files' stamps again afterwards (a race only delays it).
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsFileError(f"{cert}, {key}: OpenSSL cannot load them ({exc})") from None


def _stamp(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except OSError as exc:
        raise TlsFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFileError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _public(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def http_ssl_factory(settings: ServerSettings) -> Callable[[Any, Any], ssl.SSLContext] | None:
    """`uvicorn.Config(ssl_context_factory=...)` for settings (None without TLS); the files
    are read and checked now, so a bad one stops the start with one line naming it."""
    tls = ServerTls.from_settings(settings)
    return tls.uvicorn_factory if tls is not None else None
