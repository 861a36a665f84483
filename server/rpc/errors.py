"""The one place where errors become gRPC status codes.

Every handler of the service runs inside `guard_unary` / `guard_stream`; any
exception that escapes a handler is turned into a status here, so a request
can fail but can never take the server down.

The errors are the service layer's (server/service/errors.py); server/http/errors.py maps the same
ones to HTTP statuses.

    ParamError (engine or conversion)      -> INVALID_ARGUMENT  "<field>: <what and the allowed range>",
                                              with the field as a google.rpc.BadRequest FieldViolation
    Overloaded (admission queue full)      -> RESOURCE_EXHAUSTED
    NotReady / Unavailable (loading, draining) -> UNAVAILABLE
    anything else                          -> INTERNAL "internal error: <type>: <message>" (logged with traceback)

Client cancellation and deadlines arrive as asyncio.CancelledError, which is
not caught: grpc reports CANCELLED / DEADLINE_EXCEEDED itself, and the engine
stream is closed on the way out, which frees the sequence's slot.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from seedstream.server.service.errors import EngineError, NotReady, Overloaded, ParamError, Unavailable

log = logging.getLogger("seedstream.server")


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map an exception raised while serving a request to (status code, details)."""
    if isinstance(exc, ParamError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"server overloaded, retry later: {exc}"
    if isinstance(exc, (NotReady, Unavailable)):
        return grpc.StatusCode.UNAVAILABLE, f"service unavailable, retry later: {exc}"
    if isinstance(exc, EngineError):
        return grpc.StatusCode.INTERNAL, f"engine error: {exc}"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


async def abort_with(
    context: grpc.aio.ServicerContext[Any, Any], exc: Exception, rpc: str, request_id: str = ""
) -> NoReturn:
    """Log `exc` as it deserves and end the call with the mapped status (raises AbortError)."""
    code, details = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("rpc=%s id=%s failed: %s", rpc, request_id or "-", details, exc_info=exc)
    trailers = field_violation(exc.field, details).trailing_metadata if isinstance(exc, ParamError) else ()
    await context.abort(code, details, trailers)


def field_violation(field: str, details: str) -> grpc.Status:
    """INVALID_ARGUMENT with `details`, carrying `field` as a google.rpc.BadRequest FieldViolation in
    the grpc-status-details-bin trailer (what clients read instead of parsing the message)."""
    bad_request = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=details)]
    )
    detail = any_pb2.Any()
    detail.Pack(bad_request)
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=details, details=[detail])
    )
    return status
