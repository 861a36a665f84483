"""The one place where errors become HTTP statuses and OpenAI error objects.

    ParamError (engine or conversion)         -> 400 invalid_request_error, `param` = the OpenAI name
    ModelNotFound                             -> 404 invalid_request_error, code model_not_found
    BodyError (timeout, too large, not JSON)  -> its own status: 408, 413 or 415
    Overloaded (admission queue full)         -> 429 rate_limit_error, code overloaded
    NotReady / Unavailable (loading, draining) -> 503 service_unavailable
    anything else                             -> 500 internal_error (logged with traceback)

A ParamError carries our field (`max_new_tokens`); `names` turns it into the name the client sent
(`max_tokens`), in `param` and at the head of the message, so a 400 always names a parameter of the
request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from seedstream.server.service.errors import EngineError, NotReady, Overloaded, ParamError, Unavailable

log = logging.getLogger("seedstream.server.http")


class ModelNotFound(Exception):
    """The request names a model this server does not serve."""


class BodyError(Exception):
    """The request's body cannot be taken: too slow (408), too large (413), not JSON (415)."""

    CODES = {408: "request_timeout", 413: "request_too_large", 415: "unsupported_media_type"}

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def status_for(exc: BaseException, names: Mapping[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OpenAI error object) for an exception raised while serving a request.

    `names` maps our field names to the request's parameter names (e.g. max_new_tokens -> max_tokens).
    """
    status, body = _classify(exc, names)
    if status == 500:
        log.error("request failed: %s", body["error"]["message"], exc_info=exc)
    return status, body


def http_status(exc: BaseException) -> int:
    """The status status_for gives `exc`, without logging."""
    return _classify(exc, None)[0]


def _classify(exc: BaseException, names: Mapping[str, str] | None) -> tuple[int, dict[str, Any]]:
    if isinstance(exc, ParamError):
        field = exc.field
        param = (names or {}).get(field, field)
        message = str(exc)
        if param != field and message.startswith(field):
            message = param + message[len(field) :]
        return 400, error_body(message, "invalid_request_error", param)
    if isinstance(exc, BodyError):
        return exc.status, error_body(str(exc), "invalid_request_error", "body", BodyError.CODES[exc.status])
    if isinstance(exc, ModelNotFound):
        return 404, error_body(str(exc), "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, Overloaded):
        return 429, error_body(f"server overloaded, retry later: {exc}", "rate_limit_error", None, "overloaded")
    if isinstance(exc, (NotReady, Unavailable)):
        return 503, error_body(f"service unavailable, retry later: {exc}", "service_unavailable", None, "unavailable")
    if isinstance(exc, EngineError):
        message = f"engine error: {exc}"
    else:
        message = f"internal error: {type(exc).__name__}: {exc}"
    return 500, error_body(message, "internal_error", None, "internal_error")
