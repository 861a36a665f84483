"""The client's exceptions, and the one function that maps gRPC status codes onto them."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

# The trailer where a server puts its google.rpc.Status (read with protobuf alone: no grpcio-status).
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class SeedstreamError(Exception):
    """Base of every error the client raises. `code` is the gRPC status code (None for local checks)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code
        self.details = message


class InvalidArgumentError(SeedstreamError, ValueError):
    """A request field is out of range or the input is unusable (INVALID_ARGUMENT).

    `field` names the offending field ("temperature", "messages[0].role", ...): from the server's
    google.rpc.BadRequest detail, or from the client's own check; None when neither names one.
    """

    def __init__(
        self, message: str, code: grpc.StatusCode | None = grpc.StatusCode.INVALID_ARGUMENT, field: str | None = None
    ):
        super().__init__(message, code)
        self.field = field


class OverloadedError(SeedstreamError):
    """The server's admission queue is full (RESOURCE_EXHAUSTED); retry with backoff."""


class UnavailableError(SeedstreamError):
    """The server is unreachable, still loading its model, or shutting down (UNAVAILABLE); retry."""


class DeadlineExceededError(SeedstreamError, TimeoutError):
    """The call's timeout passed before it finished (DEADLINE_EXCEEDED)."""


class UnauthenticatedError(SeedstreamError):
    """The server requires an API key and got none or an unknown one (UNAUTHENTICATED): pass api_key=
    (or set SEEDSTREAM_API_KEY)."""


class CancelledError(SeedstreamError):
    """The call was cancelled (CANCELLED), e.g. by stream.cancel()."""


_BY_CODE: dict[grpc.StatusCode | None, type[SeedstreamError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def from_rpc_error(error: grpc.RpcError) -> SeedstreamError:
    """The SeedstreamError for a failed call (sync or asyncio)."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = error.details() if callable(getattr(error, "details", None)) else None
    name = code.name if code is not None else "UNKNOWN"
    message = details or name
    cls = _BY_CODE.get(code, SeedstreamError)
    if cls is InvalidArgumentError:
        return InvalidArgumentError(message, code, field_of(error))
    err = cls(message, code)
    if cls is SeedstreamError:
        err.args = (f"{name}: {message}",)
    return err


def field_of(error: grpc.RpcError) -> str | None:
    """The first field a google.rpc.BadRequest detail of the call's status names, if any."""
    trailing = getattr(error, "trailing_metadata", None)
    trailers: Any = trailing() if callable(trailing) else None  # (key, value) pairs, or None
    for key, value in trailers or ():
        if key != STATUS_DETAILS_KEY:
            continue
        try:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad_request = error_details_pb2.BadRequest()
                if detail.Unpack(bad_request) and bad_request.field_violations:
                    field: str = bad_request.field_violations[0].field  # google.rpc has no type stubs
                    return field
        except DecodeError:
            return None
    return None
