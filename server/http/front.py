"""The HTTP front: aiohttp routes for the OpenAI-compatible API, health and the playground.

Why aiohttp: it runs on an event loop that is already running (AppRunner + TCPSite), so it shares
the grpc.aio server's loop, engine and request accounting without owning the process's signals or
loop the way `uvicorn.Server.serve()` does; it cancels a handler whose client disconnects
(`handler_cancellation=True`), which is how a dropped SSE stream frees its engine slot, exactly like
a cancelled gRPC call; and it is one well-kept dependency (already pulled in by lm-eval's stack).

Thin by design, like server/rpc: JSON -> engine requests (parse.py), engine call, JSON back
(responses.py); every error becomes an OpenAI error object in errors.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from importlib import resources

from aiohttp import web

from seedstream.sampler import SamplingParams
from seedstream.server.engine.samples import generate_samples
from seedstream.server.engine.types import GenerationRequest, ParamError
from seedstream.server.rpc import convert
from seedstream.server.rpc.auth import ApiKeyInterceptor
from seedstream.server.rpc.servicer import _maybe_threaded, _render_chat
from seedstream.v1.protocol import DEFAULT_MAX_REQUEST_BYTES

from .errors import ModelNotFound, status_for
from .parse import ParsedRequest, parse_chat, parse_completion
from .responses import Choice, Echo, system_fingerprint, usage

log = logging.getLogger("seedstream.server.http")

MAX_BODY_BYTES = DEFAULT_MAX_REQUEST_BYTES  # as the gRPC server's largest request
MODEL_ALIAS = "seedstream"  # accepted as `model` besides the served model's id
SEED_HEADER = "seedstream-seed"


class HttpFront:
    """The OpenAI-compatible HTTP server over a ServiceState (the engine and in-flight accounting)."""

    def __init__(self, state, host: str = "127.0.0.1", port: int = 0, api_keys=None, ssl_context=None):
        self.state = state
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.ssl_context = ssl_context  # an ssl.SSLContext: HTTPS; None: plain HTTP
        self._runner: web.AppRunner | None = None
        # The gRPC server's API keys guard /v1/* here too (the same constant-time check); the page,
        # its static files and /health stay open, as gRPC health does.
        self._auth = ApiKeyInterceptor(api_keys) if api_keys else None

    @web.middleware
    async def _require_key(self, request: web.Request, handler):
        if self._auth is not None and request.path.startswith("/v1/"):
            if self._auth.client_of([("authorization", request.headers.get("Authorization", ""))]) is None:
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

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._require_key])
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
        site = web.TCPSite(self._runner, self.host, self.requested_port, ssl_context=self.ssl_context)
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
        call = _Call("chat" if chat else "completions")
        try:
            engine = self.state.ready_engine()
            parsed = await _parse(http, chat)
            call.names = parsed.names
            _check_model(engine, parsed.model)
            call.request_id = convert.check_request_id(
                http.headers.get("x-request-id", "")[: convert.MAX_REQUEST_ID_CHARS] or uuid.uuid4().hex[:16]
            )
            choices, prompt_tokens = await self._choices(engine, parsed, call)
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
            return await self._stream(http, engine, parsed, choices, prompt_tokens, envelope, header, call)
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
            "usage": usage(prompt_tokens, choices),
            "receipt": choices[0].receipt,
        }
        return web.json_response(body, headers=header, dumps=_dumps)

    async def _stream(
        self,
        http,
        engine,
        parsed: ParsedRequest,
        choices: list[Choice],
        prompt_tokens: int,
        envelope: dict,
        header: dict,
        call,
    ) -> web.StreamResponse:
        """Server-sent events, one per engine chunk, then `data: [DONE]`. The response starts with the
        first chunk, so a full queue (429) or a bad request still gets its own status."""
        envelope = {**envelope, "object": "chat.completion.chunk" if parsed.chat else "text_completion"}
        response: web.StreamResponse | None = None
        started: set[int] = set()

        async def send(parts: list, **extra) -> None:
            nonlocal response
            if response is None:
                response = web.StreamResponse(
                    headers={**header, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
                )
                await response.prepare(http)
            await response.write(b"data: " + _dumps({**envelope, "choices": parts, **extra}).encode() + b"\n\n")

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
            await response.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):  # the client went away: the slots are freed
            call.log("cancelled")
            raise
        except Exception as exc:
            call.log("error", exc)
            if response is None:
                return _error(exc, call.names)
            await response.write(b"data: " + _dumps(status_for(exc, call.names)[1]).encode() + b"\n\n")
            return response
        call.log("ok")
        return response

    async def _choices(self, engine, parsed: ParsedRequest, call) -> tuple[list[Choice], int]:
        """One Choice per (prompt, sample), validated, with the seed resolved; and the prompt tokens."""
        call.seed = parsed.seed if parsed.seed is not None else convert.draw_seed()
        if len(parsed.sampling.get("logit_bias", ())) > engine.info.vocab_size:
            raise ParamError("logit_bias", f"allowed at most vocab_size={engine.info.vocab_size} entries")
        try:
            sampling = SamplingParams(seed=call.seed, **parsed.sampling)
        except (TypeError, ValueError) as exc:
            raise ParamError("logit_bias", str(exc)) from None
        inputs = [parsed.messages] if parsed.chat else parsed.prompts
        choices: list[Choice] = []
        prompt_tokens = 0
        for i, source in enumerate(inputs):
            ids = await _prompt_ids(engine, source, parsed.chat)
            prompt_tokens += len(ids)
            base = GenerationRequest(
                prompt_token_ids=tuple(ids),
                sampling=sampling,
                max_new_tokens=parsed.max_new_tokens
                if parsed.max_new_tokens is not None
                else self.state.options.default_max_new_tokens,
                min_new_tokens=parsed.min_new_tokens,
                stop=parsed.stop,
                stop_token_ids=parsed.stop_token_ids,
                ignore_eos=parsed.ignore_eos,
                top_logprobs=parsed.top_logprobs,
                sample_index=parsed.sample_index,
                prompt_logprobs=parsed.echo and parsed.logprobs,
                request_id=call.request_id,
            )
            samples = engine.validate(base, parsed.n, echo_every_sample=True)  # every echoed choice
            echo = None
            if parsed.echo:
                echo = Echo(source if isinstance(source, str) else engine.decode(ids), ids)
            for j, valid in enumerate(samples):
                choices.append(
                    Choice(i * parsed.n + j, valid, engine, chat=parsed.chat, logprobs=parsed.logprobs, echo=echo)
                )
        call.prompt_tokens = prompt_tokens
        return choices, prompt_tokens


class _Call:
    """Per-request facts for the one log line each request gets (as the gRPC side logs)."""

    def __init__(self, route: str):
        self.route = route
        self.started = time.monotonic()
        self.request_id = ""
        self.seed: int | None = None
        self.prompt_tokens = 0
        self.names: dict[str, str] = {}

    def log(self, status: str, exc: BaseException | None = None) -> None:
        detail = f" error={type(exc).__name__}" if exc is not None else ""
        log.info(
            "http=%s id=%s seed=%s prompt_tokens=%d time=%.3fs status=%s%s",
            self.route,
            self.request_id or "-",
            self.seed,
            self.prompt_tokens,
            time.monotonic() - self.started,
            status,
            detail,
        )


async def _parse(http: web.Request, chat: bool) -> ParsedRequest:
    try:
        body = json.loads(await http.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ParamError("body", f"not valid JSON: {exc}") from None
    return parse_chat(body) if chat else parse_completion(body)


def _check_model(engine, model: str | None) -> None:
    if model is not None and model not in (engine.info.model_id, MODEL_ALIAS):
        raise ModelNotFound(f"model {model!r} is not served here: use {engine.info.model_id!r} (or {MODEL_ALIAS!r})")


async def _prompt_ids(engine, source, chat: bool) -> list[int]:
    if chat:
        return await _maybe_threaded(sum(len(m["content"]) for m in source), _render_chat, engine, source)
    if isinstance(source, str):
        return await _maybe_threaded(len(source), engine.tokenize, source, True)
    return source  # validation checks its length


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _error(exc: BaseException, names: dict | None = None) -> web.Response:
    status, body = status_for(exc, names)
    return web.json_response(body, status=status)
