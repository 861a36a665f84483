"""The errors a request can end with; each front maps them to its own status codes in one place
(server/rpc/errors.py: gRPC codes, server/http/errors.py: HTTP statuses)."""

from __future__ import annotations

from seedstream.server.engine.types import EngineError, NotReady, Overloaded, ParamError

__all__ = ["EngineError", "NotReady", "Overloaded", "ParamError", "Unavailable"]


class Unavailable(Exception):
    """The service cannot take requests right now (model loading, shutting down)."""
