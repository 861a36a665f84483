"""The HTTP front: aiohttp routes for the OpenAI-compatible API, health and the playground.

Why aiohttp: it runs on an event loop that is already running (AppRunner + TCPSite), so it shares
the grpc.aio server's loop, engine and request accounting without owning the process's signals or
loop the way `uvicorn.Server.serve()` does; it cancels a handler whose client disconnects
(`handler_cancellation=True`), which is how a dropped SSE stream frees its engine slot, exactly like
a cancelled gRPC call; and it is one well-kept dependency (already pulled in by lm-eval's stack).

Thin by design, like its sibling server/rpc: JSON -> engine requests (parse.py, prepare.py), engine call,
JSON back (responses.py); every error becomes an OpenAI error object in errors.py. What both fronts share
(state, limits, chat rendering, seeds, request ids, receipts, API keys) is the service layer's (server/service/).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler

from seedstream.server import lograte
from seedstream.server.engine.samples import generate_samples
from seedstream.server.service.inputs import request_id
from seedstream.server.service.keys import ApiKeys
from seedstream.server.service.state import maybe_threaded

from .errors import BodyError, http_status, status_for
from .gate import ConnectionGate, GatedSite, HttpLimits
from .parse import ParsedRequest, decode_json, parse_chat, parse_completion
from .prepare import check_model, prepare_choices
from .responses import Choice, Json, system_fingerprint, usage

if TYPE_CHECKING:
    import ssl

    from seedstream.server.engine import Engine
    from seedstream.server.service.metrics import ServiceMetrics
    from seedstream.server.service.state import ServiceState

log = logging.getLogger("seedstream.server.http")

SEED_HEADER = "seedstream-seed"


class HttpFront:
    """The OpenAI-compatible HTTP server over a ServiceState (the engine and in-flight accounting)."""

    def __init__(
        self,
        state: ServiceState,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: HttpLimits | None = None,
    ) -> None:
        self.state = state
        self.limits: HttpLimits = limits or HttpLimits()
        self.gate = ConnectionGate(self.limits)
        self.dropped = 0  # event streams dropped because their client stopped reading
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.ssl_context = ssl_context  # an ssl.SSLContext: HTTPS; None: plain HTTP
        self._runner: web.AppRunner | None = None
        # The gRPC server's API keys guard /v1/* here too (the same constant-time check); the page,
        # its static files and /health stay open, as gRPC health does.
        self._keys = ApiKeys(api_keys) if api_keys else None

    @web.middleware
    async def _require_key(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._keys is not None and request.path.startswith("/v1/"):
            if self._keys.client_of(request.headers.get("Authorization", "")) is None:
                log.warning("http %s status=401 (missing or unknown API key)", request.path)
                return web.json_response(
                    {
                        "error": {
                            "message": "missing or unknown API key: send the header 'Authorization: Bearer <key>'",
                            "type": "authentication_error",
                            "param": None,
                            "code": "invalid_api_key",
                        }
                    },
                    status=401,
                )
        return await handler(request)

    @web.middleware
    async def _request_done(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            self.gate.request_done(request.transport)  # the next request's headers get their own deadline

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.limits.max_body_bytes, middlewares=[self._request_done, self._require_key]
        )
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/", self.playground)
        app.router.add_static("/static/", str(resources.files("seedstream.server.http") / "static"))
        return app

    async def start(self) -> int:
        """Bind and serve on the running loop; returns the bound port."""
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        lograte.install()  # a flood of one error writes one line per interval
        site = GatedSite(self._runner, self.host, self.requested_port, self.gate, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    @property
    def scheme(self) -> str:
        return "http" if self.ssl_context is None else "https"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- simple routes

    async def health(self, request: web.Request) -> web.Response:
        if self.state.draining:
            return web.json_response({"status": "draining"}, status=503)
        if self.state.engine is None:
            return web.json_response({"status": "loading"}, status=503)
        return web.json_response({"status": "serving"})

    async def models(self, request: web.Request) -> web.Response:
        try:
            engine = self.state.ready_engine()
        except Exception as exc:
            return _error(exc)
        info = engine.info
        card = {
            "id": info.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "seedstream",
            "system_fingerprint": system_fingerprint(info),
            "max_model_len": info.max_context,
            **{
                k: getattr(info, k)
                for k in (
                    "model_sha256",
                    "model_identity",
                    "dtype",
                    "device",
                    "engine_version",
                    "sampler_version",
                    "weight_format",  # the rest of the build a replay needs (seedstream verify over HTTP)
                    "vocab_size",
                )
            },
        }
        return web.json_response({"object": "list", "data": [card]})

    async def playground(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(str(resources.files("seedstream.server.http") / "static" / "index.html"))

    # --- generation

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, http: web.Request, chat: bool) -> web.StreamResponse:
        call = _Call("chat" if chat else "completions", self.state.metrics)
        try:
            engine = self.state.ready_engine()
            parsed = _parse_body(await self._body(http), chat)
            call.names = parsed.names
            check_model(engine, parsed.model)
            call.request_id = request_id(header=http.headers.get("x-request-id", ""))
            choices = await prepare_choices(self.state, engine, parsed, call)
        except Exception as exc:
            call.log("error", exc)
            return _error(exc, call.names)
        header = {SEED_HEADER: str(call.seed), "x-request-id": call.request_id}
        envelope = {
            "id": ("chatcmpl-" if chat else "cmpl-") + call.request_id,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": engine.info.model_id,
            "system_fingerprint": system_fingerprint(engine.info),
            "seed": call.seed,
        }
        requests = [c.valid for c in choices]
        if parsed.stream:
            return await self._stream(http, engine, parsed, choices, call.prompt_tokens, envelope, header, call)
        try:
            with self.state.track():
                async with contextlib.aclosing(generate_samples(engine, requests)) as chunks:
                    async for k, chunk in chunks:
                        choices[k].add(chunk)
        except asyncio.CancelledError:
            call.log("cancelled")
            raise
        except Exception as exc:
            call.log("error", exc)
            return _error(exc, call.names)
        call.log("ok")
        body = {
            **envelope,
            "choices": [c.whole() for c in choices],
            "usage": usage(call.prompt_tokens, choices),
            "receipt": choices[0].receipt,
        }
        return web.json_response(body, headers=header, dumps=_dumps)

    async def _stream(
        self,
        http: web.Request,
        engine: Engine,
        parsed: ParsedRequest,
        choices: list[Choice],
        prompt_tokens: int,
        envelope: Json,
        header: dict[str, str],
        call: _Call,
    ) -> web.StreamResponse:
        """Server-sent events, one per engine chunk, then `data: [DONE]`. The response starts with the
        first chunk, so a full queue (429) or a bad request still gets its own status."""
        envelope = {**envelope, "object": "chat.completion.chunk" if parsed.chat else "text_completion"}
        response: web.StreamResponse | None = None
        started: set[int] = set()

        async def write(data: bytes) -> None:
            nonlocal response
            if response is None:
                response = web.StreamResponse(
                    headers={**header, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
                )
                await response.prepare(http)
            await response.write(data)

        async def send(parts: list[Json], **extra: Any) -> None:
            data = b"data: " + _dumps({**envelope, "choices": parts, **extra}).encode() + b"\n\n"
            try:  # a write waits only while the client's buffers are full: it has stopped reading
                await asyncio.wait_for(write(data), self.limits.stall_timeout)
            except asyncio.TimeoutError:
                raise _Stalled from None

        try:
            with self.state.track():
                async with contextlib.aclosing(generate_samples(engine, [c.valid for c in choices])) as chunks:
                    async for k, chunk in chunks:
                        if parsed.chat and k not in started:
                            started.add(k)
                            await send(
                                [
                                    {
                                        "index": k,
                                        "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None,
                                        "finish_reason": None,
                                    }
                                ]
                            )
                        await send([choices[k].add(chunk)])
            if parsed.include_usage:
                await send([], usage=usage(prompt_tokens, choices))
            await write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):  # the client went away: the slots are freed
            call.log("cancelled")
            raise
        except _Stalled:  # the engine's slots are already freed (aclosing); now the connection
            self.dropped += 1
            call.log("dropped", detail=f"client read nothing for {self.limits.stall_timeout:g}s")
            if http.transport is not None:
                http.transport.abort()
            raise asyncio.CancelledError from None
        except Exception as exc:
            call.log("error", exc)
            if response is None:
                return _error(exc, call.names)
            await response.write(b"data: " + _dumps(status_for(exc, call.names)[1]).encode() + b"\n\n")
            return response
        call.log("ok")
        assert response is not None  # the [DONE] line was written
        return response

    async def _body(self, http: web.Request) -> Any:
        """The decoded JSON body, within the front's limits: 415 unless JSON, 413 over the size cap, 408
        past the body deadline; a big body is decoded off the loop."""
        if http.content_type != "application/json":  # a browser's form or text/plain post cannot start work
            raise BodyError(415, f"Content-Type must be application/json, got {http.content_type!r}")
        cap = self.limits.max_body_bytes
        too_large = f"allowed at most {cap} bytes (--http-max-body-bytes)"
        if http.content_length is not None and http.content_length > cap:
            raise BodyError(413, f"body of {http.content_length} bytes; {too_large}")
        try:
            raw = await asyncio.wait_for(http.read(), self.limits.body_timeout)
        except asyncio.TimeoutError:
            raise BodyError(408, f"the body did not arrive within {self.limits.body_timeout:g}s") from None
        except web.HTTPRequestEntityTooLarge:
            raise BodyError(413, f"body over the limit; {too_large}") from None
        return await maybe_threaded(len(raw), decode_json, raw)


class _Stalled(Exception):
    """An event stream's client stopped reading for longer than --http-stall-timeout."""


class _Call:
    """Per-request facts for the one log line each request gets (as the gRPC side logs)."""

    def __init__(self, route: str, metrics: ServiceMetrics | None = None) -> None:
        self.route = route
        self.metrics = metrics  # None when the server exports no metrics
        self.started = time.monotonic()
        self.request_id = ""
        self.seed: int | None = None
        self.prompt_tokens = 0
        self.names: dict[str, str] = {}

    def log(self, status: str, exc: BaseException | None = None, detail: str = "") -> None:
        """The request's one line and, where the server exports metrics, its one count: code OK, CANCELLED,
        DROPPED (an event stream whose client stopped reading) or the HTTP status of an error."""
        elapsed = time.monotonic() - self.started
        code = {"ok": "OK", "cancelled": "CANCELLED", "dropped": "DROPPED"}.get(status)
        if code is None:
            code = str(http_status(exc)) if exc is not None else "500"
        extra = f" error={type(exc).__name__}" if exc is not None else ""
        extra += f" ({detail})" if detail else ""
        log.info(
            "http=%s id=%s seed=%s prompt_tokens=%d time=%.3fs status=%s code=%s%s",
            self.route,
            self.request_id or "-",
            self.seed,
            self.prompt_tokens,
            elapsed,
            status,
            code,
            extra,
        )
        if self.metrics is not None:
            self.metrics.observe_request("http." + self.route, code, elapsed, {"prompt_tokens": self.prompt_tokens})


def _parse_body(body: Any, chat: bool) -> ParsedRequest:
    return parse_chat(body) if chat else parse_completion(body)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _error(exc: BaseException, names: dict[str, str] | None = None) -> web.Response:
    status, body = status_for(exc, names)
    response = web.json_response(body, status=status)
    if isinstance(exc, BodyError):
        response.force_close()  # the rest of the body may still be on the wire
    return response
