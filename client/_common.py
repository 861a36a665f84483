"""Pieces shared by Client and AsyncClient: credentials, health wire format."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import cast

import grpc
from google.protobuf import wrappers_pb2

from .types import HealthStatus

# grpc.health.v1.Health/Check without a dependency on grpcio-health-checking:
# HealthCheckRequest is {string service = 1} and HealthCheckResponse is
# {enum ServingStatus status = 1}, which on the wire are exactly
# google.protobuf.StringValue and google.protobuf.Int32Value.
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
HEALTH_REQUEST = wrappers_pb2.StringValue
HEALTH_RESPONSE = wrappers_pb2.Int32Value
# Call metadata as a caller may give it: a dict, (key, value) pairs, or None.
Metadata = Mapping[str, str] | Sequence[tuple[str, str]] | None

_HEALTH_STATUS = {
    0: HealthStatus.UNKNOWN,
    1: HealthStatus.SERVING,
    2: HealthStatus.NOT_SERVING,
    3: HealthStatus.SERVICE_UNKNOWN,
}


def health_status(response: wrappers_pb2.Int32Value) -> HealthStatus:
    return _HEALTH_STATUS.get(response.value, HealthStatus.UNKNOWN)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as fh:
        return fh.read()


def channel_credentials(
    credentials: grpc.ChannelCredentials | None,
    secure: bool,
    root_certificates: bytes | str | None,
    private_key: bytes | str | None,
    certificate_chain: bytes | str | None,
) -> grpc.ChannelCredentials | None:
    """None for a plaintext channel; TLS credentials otherwise.

    Certificates may be given as PEM bytes or as file paths (str).
    """
    if credentials is not None:
        return credentials
    if not (secure or root_certificates or private_key or certificate_chain):
        return None

    def pem(value: bytes | str | None) -> bytes | None:
        return _read(value) if isinstance(value, str) else value

    return grpc.ssl_channel_credentials(
        root_certificates=pem(root_certificates),
        private_key=pem(private_key),
        certificate_chain=pem(certificate_chain),
    )


API_KEY_ENV = "SEEDSTREAM_API_KEY"


def with_api_key(metadata: Metadata, api_key: str | None) -> Metadata:
    """`metadata` (dict, pairs or None) plus 'authorization: Bearer KEY' when there is a key (the
    argument, else $SEEDSTREAM_API_KEY); unchanged when there is none."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        return metadata
    items = (
        list(metadata.items()) if isinstance(metadata, dict) else list(cast(Sequence[tuple[str, str]], metadata or ()))
    )
    return [("authorization", f"Bearer {key}")] + items


class _Unset:
    def __repr__(self) -> str:
        return "<client default>"


UNSET = _Unset()  # "use the client's default timeout"
