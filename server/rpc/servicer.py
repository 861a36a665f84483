"""The TextGeneration servicer: proto in, engine call, proto out. Thin by design."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import time
import uuid
from typing import Any, Optional

import grpc

from seedstream.server.engine.rolling import score_rolling
from seedstream.server.engine.samples import generate_samples, sample_requests
from seedstream.server.engine.scoring import prepare_pairs, score_pairs
from seedstream.server.engine.types import InvalidRequest
from seedstream.v1 import textgen_pb2 as pb
from seedstream.v1 import textgen_pb2_grpc as pb_grpc

from . import convert
from .errors import Unavailable, abort_with, status_for

log = logging.getLogger("seedstream.server")

# Inputs longer than this many characters are tokenized on a worker thread so the
# event loop keeps streaming other requests meanwhile.
_THREAD_TOKENIZE_CHARS = 8192


@dataclasses.dataclass
class ServiceOptions:
    default_max_new_tokens: int = 256  # used when a request leaves max_new_tokens unset
    server_version: str = "unknown"


class ServiceState:
    """What the handlers need: the engine once loaded, and whether we are draining."""

    def __init__(self, engine=None, options: Optional[ServiceOptions] = None):
        self.engine = engine
        self.options = options or ServiceOptions()
        self.draining = False
        self.in_flight = 0
        self.metrics = None  # a metrics.ServiceMetrics when the server exports metrics
        self._idle = asyncio.Event()
        self._idle.set()

    def ready_engine(self):
        if self.draining:
            raise Unavailable("the server is shutting down")
        if self.engine is None:
            raise Unavailable("the model is still loading")
        return self.engine

    @contextlib.contextmanager
    def track(self):
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` seconds passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


class _Call:
    """Per-call facts for the one log line (and metrics) each request gets."""

    def __init__(self, rpc: str, context: grpc.aio.ServicerContext, metrics=None):
        self.rpc = rpc
        self.context = context
        self.metrics = metrics
        self.started = time.monotonic()
        self.request_id = ""
        self.key_id = ""  # the API key's id once authentication sets it
        self.fields: dict[str, Any] = {}
        self.first_token_at: Optional[float] = None
        self._last_token_at: dict[int, float] = {}  # per sample, for inter-token latency

    def tokens_arrived(self, sample: int, count: int) -> None:
        """`count` tokens of sample `sample` reached the handler (time to first token, inter-token)."""
        if not count:
            return
        now = time.monotonic()
        if self.first_token_at is None:
            self.first_token_at = now
            if self.metrics is not None:
                self.metrics.observe_first_token(self.rpc, now - self.started)
        last = self._last_token_at.get(sample)
        if last is not None and self.metrics is not None:
            self.metrics.observe_inter_token(self.rpc, (now - last) / count, count)
        self._last_token_at[sample] = now

    def log_line(self, status: str) -> None:
        """The request ended with `status` (a grpc.StatusCode name): one log line, and metrics."""
        elapsed = time.monotonic() - self.started
        parts = [f"rpc={self.rpc}", f"id={self.request_id or '-'}"]
        parts += [f"{k}={v}" for k, v in self.fields.items()]
        ttft = None if self.first_token_at is None else self.first_token_at - self.started
        if ttft is not None:
            parts.append(f"ttft={ttft:.3f}s")
        parts += [f"time={elapsed:.3f}s", f"status={status}"]
        record = {"rpc": self.rpc, "request_id": self.request_id, "key_id": self.key_id, **self.fields,
                  "ttft_s": None if ttft is None else round(ttft, 6), "time_s": round(elapsed, 6), "status": status}
        log.info(" ".join(parts), extra={"request": record})  # --log-format json writes `record` as is
        if self.metrics is not None:
            self.metrics.observe_request(self.rpc, status, elapsed, self.fields)


def _metadata_value(context: grpc.aio.ServicerContext, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("utf-8", "replace")
    return ""


def _guard_unary(rpc: str):
    """Wrap a unary handler: map errors to a status in one place and log one line."""

    def deco(fn):
        @functools.wraps(fn)
        async def wrapper(self, request, context):
            call = _Call(rpc, context, self.state.metrics)
            try:
                response = await fn(self, request, context, call)
            except asyncio.CancelledError:
                call.log_line(_cancel_reason(context))
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                call.log_line(_code_name(exc))
                await abort_with(context, exc, rpc, call.request_id)
            else:
                call.log_line("OK")
                return response

        return wrapper

    return deco


def _guard_stream(rpc: str):
    """Wrap a server-streaming handler the same way."""

    def deco(fn):
        @functools.wraps(fn)
        async def wrapper(self, request, context):
            call = _Call(rpc, context, self.state.metrics)
            try:
                async for message in fn(self, request, context, call):
                    yield message
            except asyncio.CancelledError:
                call.log_line(_cancel_reason(context))
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                call.log_line(_code_name(exc))
                await abort_with(context, exc, rpc, call.request_id)
            else:
                call.log_line("OK")

        return wrapper

    return deco


def _cancel_reason(context) -> str:
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"


def _code_name(exc: Exception) -> str:
    return status_for(exc)[0].name


class TextGenerationServicer(pb_grpc.TextGenerationServicer):
    def __init__(self, state: ServiceState):
        self.state = state

    # --- helpers

    async def _prompt_ids(self, engine, req) -> list[int]:
        which = req.WhichOneof("input")
        if which is None:
            raise InvalidRequest("input", "set one of prompt, messages or prompt_token_ids")
        if which == "prompt_token_ids":
            ids = req.prompt_token_ids.ids
            context = engine.info.max_context
            if len(ids) >= context:  # before copying: a huge list must not stall the event loop
                raise InvalidRequest("prompt", f"{len(ids)} tokens; allowed at most {context - 1} (model context {context})")
            return list(ids)
        if which == "prompt":
            return await _maybe_threaded(len(req.prompt), engine.tokenize, req.prompt, True)
        messages = convert.chat_messages(req.messages)
        size = sum(len(m["content"]) for m in messages)
        return await _maybe_threaded(size, _render_chat, engine, messages)

    @staticmethod
    def _request_id(req, context, call: _Call) -> None:
        call.request_id = convert.check_request_id(
            req.request_id or _metadata_value(context, "x-request-id")[: convert.MAX_REQUEST_ID_CHARS] or uuid.uuid4().hex[:16]
        )

    async def _prepare(self, req: pb.GenerateRequest, context, call: _Call):
        """The engine and one engine request per sample (n of them), validated."""
        engine = self.state.ready_engine()
        self._request_id(req, context, call)
        seed = req.seed if req.HasField("seed") else convert.draw_seed()
        call.fields["seed"] = seed
        prompt_ids = await self._prompt_ids(engine, req)
        call.fields["prompt_tokens"] = len(prompt_ids)
        if len(req.logit_bias) > engine.info.vocab_size:
            raise InvalidRequest("logit_bias", f"{len(req.logit_bias)} entries; allowed at most vocab_size={engine.info.vocab_size}")
        gen = convert.generation_request(req, prompt_ids, seed, call.request_id, self.state.options.default_max_new_tokens)
        requests = sample_requests(gen, convert.num_samples(req))
        if len(requests) > 1:
            call.fields["n"] = len(requests)
        engine.validate(requests[0])  # before any header is sent; the samples differ only in sample_index
        return engine, requests

    # --- RPCs

    @_guard_unary("Generate")
    async def Generate(self, request, context, call):
        engine, requests = await self._prepare(request, context, call)
        accs = [convert.UnaryAccumulator(r) for r in requests]
        with self.state.track():
            async with contextlib.aclosing(generate_samples(engine, requests)) as chunks:
                async for j, chunk in chunks:
                    call.tokens_arrived(j, len(chunk.token_ids))
                    accs[j].add(chunk)
        call.fields["completion_tokens"] = sum(a.completion_tokens for a in accs)
        call.fields["finish"] = ",".join(a.finish_reason.value if a.finish_reason else "none" for a in accs)
        return convert.samples_response([a.response(convert.receipt(engine.info, a.request)) for a in accs])

    @_guard_stream("GenerateStream")
    async def GenerateStream(self, request, context, call):
        engine, requests = await self._prepare(request, context, call)
        await context.send_initial_metadata(
            (("seedstream-seed", str(requests[0].sampling.seed)), ("seedstream-request-id", call.request_id))
        )
        # The prompt echo rides on sample 0's first chunk, which must be the stream's first message.
        held: Optional[list] = [] if requests[0].prompt_logprobs else None
        finishes: dict[int, str] = {}
        done_tokens: dict[int, int] = {}
        with self.state.track():
            async with contextlib.aclosing(generate_samples(engine, requests)) as chunks:
                async for j, chunk in chunks:
                    call.tokens_arrived(j, len(chunk.token_ids))
                    done_tokens[j] = chunk.completion_tokens
                    call.fields["completion_tokens"] = sum(done_tokens.values())
                    if chunk.finish_reason is not None:
                        finishes[j] = chunk.finish_reason.value
                    last = chunk.finish_reason is not None
                    req = requests[j]
                    message = convert.stream_message(chunk, req, convert.receipt(engine.info, req) if last else None)
                    if held is not None and j != 0:
                        held.append(message)
                        continue
                    yield message
                    if held is not None:
                        for m in held:
                            yield m
                        held = None
        call.fields["finish"] = ",".join(finishes[j] for j in sorted(finishes))

    @_guard_unary("Score")
    async def Score(self, request, context, call):
        engine = self.state.ready_engine()
        self._request_id(request, context, call)
        pairs = convert.score_pairs_in(request)
        chars = sum(len(c) + len(x) for c, x in pairs if isinstance(c, str))
        prepared = await _maybe_threaded(chars, prepare_pairs, engine, pairs, request.truncate_context)
        call.fields["pairs"] = len(prepared)
        call.fields["tokens"] = sum(len(p.context_ids) + len(p.continuation_ids) for p in prepared)
        with self.state.track():
            scores = await score_pairs(engine, prepared, call.request_id)
        scored = [ids for p in prepared for ids in (p.context_ids, p.continuation_ids)]
        return pb.ScoreResponse(results=[convert.score_result_pb(s) for s in scores],
                                receipt=convert.score_receipt(engine.info, scored))

    @_guard_unary("ScoreRolling")
    async def ScoreRolling(self, request, context, call):
        engine = self.state.ready_engine()
        self._request_id(request, context, call)
        which = request.WhichOneof("input")
        if which is None:
            raise InvalidRequest("input", "set one of text or token_ids")
        if which == "text":
            ids = await _maybe_threaded(len(request.text), engine.tokenize, request.text)
        else:
            ids = list(request.token_ids.ids)
        max_length = request.max_length if request.HasField("max_length") else engine.info.max_context - 1
        call.fields["tokens"] = len(ids)
        with self.state.track():
            result = await score_rolling(engine, ids, max_length, call.request_id)
        return pb.ScoreRollingResponse(
            token_ids=ids, logprobs=result.logprobs, logprob=math.fsum(result.logprobs),
            greedy_token_ids=result.greedy_ids, num_windows=result.num_windows, max_length=max_length,
            receipt=convert.score_receipt(engine.info, [ids, [max_length]]),
        )

    @_guard_unary("Tokenize")
    async def Tokenize(self, request, context, call):
        engine = self.state.ready_engine()
        which = request.WhichOneof("input")
        if which is None:
            raise InvalidRequest("input", "set one of text or messages")
        if which == "text":
            special = request.add_special_tokens if request.HasField("add_special_tokens") else True
            ids, texts = await _maybe_threaded(len(request.text), _tokenize_with_texts, engine, request.text, special)
        else:
            if request.HasField("add_special_tokens"):
                raise InvalidRequest("add_special_tokens", "applies to text only; chat rendering decides special tokens")
            messages = convert.chat_messages(request.messages)
            ids, texts = await _maybe_threaded(sum(len(m["content"]) for m in messages), _tokenize_with_texts,
                                               engine, messages, None)
        call.fields["tokens"] = len(ids)
        return pb.TokenizeResponse(token_ids=ids, tokens=texts)

    @_guard_unary("GetModelInfo")
    async def GetModelInfo(self, request, context, call):
        engine = self.state.ready_engine()
        config = engine.config
        return convert.model_info(
            engine.info,
            server_version=self.state.options.server_version,
            has_chat_template=bool(getattr(engine.tokenizer, "chat_template", None)),
            max_new_tokens_limit=config.max_new_tokens_limit,
            default_max_new_tokens=self.state.options.default_max_new_tokens,
            max_batch_size=config.max_batch_size,
            max_queue=config.max_queue,
        )


def _render_chat(engine, messages: list[dict[str, str]]) -> list[int]:
    try:
        return engine.render_chat(messages)
    except InvalidRequest:
        raise
    except Exception as exc:  # template errors (unknown role, bad ordering) are the caller's to fix
        raise InvalidRequest("messages", f"the model's chat template rejected the messages: {exc}") from None


def _tokenize_with_texts(engine, source, add_special_tokens):
    """Token ids of a text (or of chat messages when add_special_tokens is None), and each token's text
    on its own with special tokens shown (unlike generated text, which omits them)."""
    ids = _render_chat(engine, source) if add_special_tokens is None else engine.tokenize(source, add_special_tokens)
    decode = engine.tokenizer.decode
    return ids, [decode([t], skip_special_tokens=False, clean_up_tokenization_spaces=False) for t in ids]


async def _maybe_threaded(size: int, fn, *args):
    if size > _THREAD_TOKENIZE_CHARS:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)
