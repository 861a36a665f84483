"""API-key authentication: bearer tokens in `authorization` metadata, checked by a server interceptor.

Keys come from a file (`--api-key-file`) or the SEEDSTREAM_API_KEYS environment
variable, never from a flag value (which `ps` would show). Each entry is `KEY`
or `NAME KEY`; NAME (default: `key-` + the first 8 hex digits of the key's
SHA-256) identifies the client in the log and for fair admission, and is never
the secret itself. grpc.health.v1 stays open so probes need no key.

The authenticated client's name reaches the servicer through `CLIENT_NAME`, a
context variable set inside the handler's own task.
"""

from __future__ import annotations

import contextvars
import hashlib
import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import grpc

from seedstream.server.service.keys import ApiKeys

if TYPE_CHECKING:
    from typing import TypeAlias

    # Any RPC's handler and context: the interceptor never reads the messages. grpc-stubs types the handlers'
    # behaviours as the sync API's functions; on grpc.aio they are coroutine and async generator functions.
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger("seedstream.server")

CLIENT_NAME: contextvars.ContextVar[str] = contextvars.ContextVar("seedstream_client", default="")
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
KEYS_ENV = "SEEDSTREAM_API_KEYS"
MIN_KEY_CHARS = 16


def default_name(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def parse_keys(text: str, source: str) -> dict[str, str]:
    """{key: name} from lines (or comma-separated entries) of `KEY` or `NAME KEY`; `#` starts a comment."""
    keys: dict[str, str] = {}
    for number, raw in enumerate(text.replace(",", "\n").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2:
            raise ValueError(f"{source} entry {number}: expected 'KEY' or 'NAME KEY'")
        name, key = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(f"{source} entry {number}: a key needs at least {MIN_KEY_CHARS} characters")
        keys[key] = name or default_name(key)
    if not keys:
        raise ValueError(f"{source}: no API keys in it")
    return keys


def load_keys(path: str | None, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Keys from the file at `path` and from $SEEDSTREAM_API_KEYS; empty when neither is given."""
    keys: dict[str, str] = {}
    if path:
        with open(path, encoding="utf-8") as fh:
            keys.update(parse_keys(fh.read(), path))
    if environ.get(KEYS_ENV, "").strip():
        keys.update(parse_keys(environ[KEYS_ENV], KEYS_ENV))
    return keys


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED unless `authorization: Bearer <key>` names a known key (health is open)."""

    def __init__(self, keys: Mapping[str, str], on_denied: Callable[[str, str], None] | None = None):
        if not keys:
            raise ValueError("ApiKeyInterceptor needs at least one key")
        self._keys = ApiKeys(keys)
        self._on_denied = on_denied  # on_denied(rpc, "UNAUTHENTICATED") for each refused call (metrics)

    def client_of(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        """The client's name if the (last) `authorization` entry is a bearer token of a known key."""
        authorization: str | bytes = ""
        for k, v in metadata or ():
            if k == "authorization":
                authorization = v
        return self._keys.client_of(authorization)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        name = self.client_of(details.invocation_metadata)
        if name is not None:
            return _with_client(handler, name)
        rpc = details.method.rsplit("/", 1)[-1]
        if self._on_denied is not None:
            self._on_denied(rpc, grpc.StatusCode.UNAUTHENTICATED.name)
        return _denied(handler, rpc)


async def _deny(context: Context) -> None:
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED, "missing or unknown API key: send metadata 'authorization: Bearer <key>'"
    )


def _denied(handler: Handler, rpc: str) -> Handler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED without running it."""
    log.warning("rpc=%s status=UNAUTHENTICATED (missing or unknown API key)", rpc)

    async def unary(request: object, context: Context) -> None:
        await _deny(context)

    async def stream(request: object, context: Context) -> AsyncIterator[None]:
        await _deny(context)
        yield  # pragma: no cover - abort raises first

    return _rebuild(handler, unary, stream)


def _with_client(handler: Handler, name: str) -> Handler:
    """`handler` with CLIENT_NAME set to the authenticated client's name for the call."""
    # The one behaviour the handler has: an async function of (request, aio context) on grpc.aio.
    inner = cast(
        "Callable[[Any, Context], Any]",
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream,
    )

    async def unary(request: Any, context: Context) -> Any:
        CLIENT_NAME.set(name)
        return await inner(request, context)

    async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
        CLIENT_NAME.set(name)
        async for message in inner(request, context):
            yield message

    # A guarded stream (guard.guard_stream) is a coroutine that writes with context.write: await it as it is.
    return _rebuild(handler, unary, stream if inspect.isasyncgenfunction(inner) else unary)


_MAKERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _rebuild(handler: Handler, unary: Callable[[Any, Context], Any], stream: Callable[[Any, Context], Any]) -> Handler:
    """A handler with `handler`'s shape and (de)serializers whose behaviour is `unary` (one response) or
    `stream` (a response stream); the first argument is the request or the request iterator."""
    make = _MAKERS[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(
        stream if handler.response_streaming else unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
