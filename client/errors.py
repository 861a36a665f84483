"""The client's exceptions, and the one function that maps gRPC status codes onto them."""

from __future__ import annotations

import re
from typing import Optional

import grpc


class SeedstreamError(Exception):
    """Base of every error the client raises. `code` is the gRPC status code (None for local checks)."""

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None):
        super().__init__(message)
        self.code = code
        self.details = message


class InvalidArgumentError(SeedstreamError, ValueError):
    """A request field is out of range or the input is unusable (INVALID_ARGUMENT).

    `field` names the offending field ("temperature", "messages[0].role", ...).
    """

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = grpc.StatusCode.INVALID_ARGUMENT):
        super().__init__(message, code)
        match = re.match(r"\s*([A-Za-z_][A-Za-z_0-9.\[\]]*)", message)
        self.field = match.group(1) if match else None


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


_BY_CODE = {
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
        return InvalidArgumentError(message, code)
    err = cls(message, code)
    if cls is SeedstreamError:
        err.args = (f"{name}: {message}",)
    return err
