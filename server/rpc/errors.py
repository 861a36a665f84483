"""The one place where errors become gRPC status codes.

Every handler of the service runs inside `guard_unary` / `guard_stream`; any
exception that escapes a handler is turned into a status here, so a request
can fail but can never take the server down.

    InvalidRequest (engine or conversion)  -> INVALID_ARGUMENT  "<field>: <what and the allowed range>"
    Overloaded (admission queue full)      -> RESOURCE_EXHAUSTED
    NotReady / Unavailable (loading, draining) -> UNAVAILABLE
    anything else                          -> INTERNAL "internal error: <type>: <message>" (logged with traceback)

Client cancellation and deadlines arrive as asyncio.CancelledError, which is
not caught: grpc reports CANCELLED / DEADLINE_EXCEEDED itself, and the engine
stream is closed on the way out, which frees the sequence's slot.
"""

from __future__ import annotations

import logging

import grpc

from seedstream.server.engine.types import EngineError, InvalidRequest, NotReady, Overloaded

log = logging.getLogger("seedstream.server")


class Unavailable(Exception):
    """The service cannot take requests right now (model loading, shutting down)."""


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map an exception raised while serving a request to (status code, details)."""
    if isinstance(exc, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"server overloaded, retry later: {exc}"
    if isinstance(exc, (NotReady, Unavailable)):
        return grpc.StatusCode.UNAVAILABLE, f"service unavailable, retry later: {exc}"
    if isinstance(exc, EngineError):
        return grpc.StatusCode.INTERNAL, f"engine error: {exc}"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


async def abort_with(context: grpc.aio.ServicerContext, exc: Exception, rpc: str, request_id: str = "") -> None:
    """Log `exc` as it deserves and end the call with the mapped status (raises AbortError)."""
    code, details = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("rpc=%s id=%s failed: %s", rpc, request_id or "-", details, exc_info=exc)
    await context.abort(code, details)
