"""What keeps a served port safe: API keys, TLS and client certificates, reflection, limits.

`Security` is what SeedstreamServer takes; `security_from_options` builds it
from `seedstream serve`'s flags (the fields of ServeOptions) and refuses, or warns
about, a plaintext server without API keys on a non-loopback address.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from seedstream.server.service.inputs import RequestLimits

from .auth import ApiKeyInterceptor, load_keys
from .limits import ConnectionLimits
from .tls import GRPC_FLAGS, HTTP_FLAGS, load_client_ca, load_pair

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Limits = TypeVar("_Limits", bound="DataclassInstance")

log = logging.getLogger("seedstream.server")

# Set in the Docker image: there, an exposed plaintext port without keys is an error unless --insecure.
REFUSE_INSECURE_ENV = "SEEDSTREAM_REFUSE_INSECURE"


@dataclasses.dataclass
class Security:
    api_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)  # {key: client name}; empty = no auth
    reflection: bool = True
    connection_limits: ConnectionLimits = dataclasses.field(default_factory=ConnectionLimits)
    request_limits: RequestLimits = dataclasses.field(default_factory=RequestLimits)

    def interceptors(self, on_denied: Callable[[str, str], None] | None = None) -> list[grpc.aio.ServerInterceptor]:
        """The server interceptors; `on_denied(rpc, code)` is told of each call they refuse (metrics)."""
        return [ApiKeyInterceptor(self.api_keys, on_denied)] if self.api_keys else []


def server_credentials(cert: str | None, key: str | None, client_ca: str | None) -> grpc.ServerCredentials | None:
    """TLS credentials from PEM files; with `client_ca`, clients must present a certificate it signed (mTLS)."""
    if not cert and not key:
        if client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cert and key):
        raise ValueError("--tls-cert and --tls-key go together")
    cert_pem, key_pem, _ = load_pair(cert, key, GRPC_FLAGS)  # grpc-core would say only "Failed to bind"
    if not client_ca:
        return grpc.ssl_server_credentials([(key_pem, cert_pem)])
    ca_pem = load_client_ca(client_ca)
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True)


def http_ssl_context(cert: str | None, key: str | None, http_port: int | None) -> ssl.SSLContext | None:
    """The HTTP front's TLS context from PEM files (None: plain HTTP); the same files as `--tls-cert`
    and `--tls-key` will do, or others (e.g. a certificate for the browser-facing name)."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("--http-tls-cert and --http-tls-key go together")
    if http_port is None:
        raise ValueError("--http-tls-cert needs --http-port (the HTTP front is off)")
    return load_pair(cert, key, HTTP_FLAGS)[2]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(
    host: str, has_keys: bool, tls: bool, insecure: bool, environ: Mapping[str, str] = os.environ
) -> None:
    """Warn about (or, where REFUSE_INSECURE_ENV is set and --insecure is not, refuse) a server that
    anyone who reaches the port can use and overhear."""
    if is_loopback(host) or has_keys or tls:
        return
    message = (
        f"serving plaintext without API keys on {host or 'every interface'}: anyone who reaches the "
        "port can use it; set --api-key-file or SEEDSTREAM_API_KEYS, and --tls-cert/--tls-key"
    )
    if environ.get(REFUSE_INSECURE_ENV, "") not in ("", "0") and not insecure:
        raise ValueError(message + " (or pass --insecure to accept this)")
    log.warning(message)


def security_from_options(options: Mapping[str, Any], host: str, tls: bool) -> Security:
    """Security from ServeOptions' fields as a mapping (keys: api_key_file, reflection, insecure, and the
    fields of ConnectionLimits and RequestLimits; missing keys keep their defaults)."""
    keys = load_keys(options.get("api_key_file"))
    check_exposure(host, bool(keys), tls, bool(options.get("insecure")))
    if keys:
        log.info("API keys required for %d client(s): %s", len(keys), ", ".join(sorted(set(keys.values()))))
    return Security(
        api_keys=keys,
        reflection=options.get("reflection", True),
        connection_limits=_fill(ConnectionLimits, options),
        request_limits=_fill(RequestLimits, options),
    )


def _fill(cls: type[_Limits], options: Mapping[str, Any]) -> _Limits:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in names and v is not None})
