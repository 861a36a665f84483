"""The TextGeneration servicer: proto in, engine call, proto out. Thin by design: what the HTTP front
needs too (state, limits, chat, seeds, request ids, receipts) is the service layer's (server/service/)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from seedstream.server.engine.rolling import rolling_pairs, score_rolling
from seedstream.server.engine.samples import generate_samples
from seedstream.server.engine.scoring import MAX_PAIRS, prepare_pairs, score_pairs
from seedstream.server.service import inputs
from seedstream.server.service.errors import ParamError
from seedstream.server.service.inputs import check_chars, check_count, check_tokens, render_chat
from seedstream.server.service.receipts import completion_receipt, score_receipt
from seedstream.server.service.state import ServiceState, maybe_threaded
from seedstream.v1 import signing
from seedstream.v1 import textgen_pb2 as pb
from seedstream.v1 import textgen_pb2_grpc as pb_grpc

from . import convert
from .guard import Call, guard_stream, guard_unary

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from seedstream.server.engine import Engine, GenerationRequest
    from seedstream.server.engine.scoring import PreparedPair
    from seedstream.server.engine.validation import ValidRequest

    from .guard import Context

_Result = TypeVar("_Result")


def _metadata_value(context: Context, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("utf-8", "replace")
    return ""


class TextGenerationServicer(pb_grpc.TextGenerationServicer):
    def __init__(self, state: ServiceState) -> None:
        self.state = state

    # --- helpers (plain functions of the request: they may run on a worker thread)

    def _prompt_ids(self, engine: Engine, req: pb.GenerateRequest) -> Sequence[int]:
        which = req.WhichOneof("input")
        if which is None:
            raise ParamError("input", "set one of prompt, messages or prompt_token_ids")
        max_chars, _ = self.state.input_caps(engine)
        if which == "prompt_token_ids":
            return req.prompt_token_ids.ids  # copied once, into the request; validation checks its length
        if which == "prompt":
            check_chars("prompt", len(req.prompt), max_chars)
            return engine.tokenize(req.prompt, True)
        check_chars("messages", convert.chat_chars(req.messages), max_chars)
        return render_chat(engine, convert.chat_messages(req.messages))

    def _request_id(
        self, req: pb.GenerateRequest | pb.ScoreRequest | pb.ScoreRollingRequest, context: Context, call: Call
    ) -> None:
        call.request_id = inputs.request_id(req.request_id, _metadata_value(context, "x-request-id"))

    def _prepare(self, engine: Engine, req: pb.GenerateRequest, call: Call, seed: int) -> tuple[ValidRequest, ...]:
        """One validated engine request per sample (n of them), checked before any header is sent."""
        convert.check_wire_counts(req)
        n = convert.num_samples(req)
        queue = engine.config.max_queue
        if n > queue:  # every sample waits in the queue at first: more could never be admitted
            raise ParamError("n", f"{n} samples; this server holds at most max_queue={queue} waiting requests")
        prompt_ids = self._prompt_ids(engine, req)
        call.fields["prompt_tokens"] = len(prompt_ids)
        gen = convert.generation_request(
            req, prompt_ids, seed, call.request_id, self.state.options.default_max_new_tokens, call.client
        )
        return engine.validate(gen, n)

    async def _generation(
        self, req: pb.GenerateRequest, context: Context, call: Call
    ) -> tuple[Engine, tuple[ValidRequest, ...]]:
        engine = self.state.ready_engine()
        self._request_id(req, context, call)
        seed = req.seed if req.HasField("seed") else inputs.draw_seed()
        call.fields["seed"] = seed
        requests = await _off_loop(req, self._prepare, engine, req, call, seed)
        if len(requests) > 1:
            call.fields["n"] = len(requests)
        return engine, requests

    # --- RPCs

    @guard_unary("Generate")
    async def Generate(self, request: pb.GenerateRequest, context: Context, call: Call) -> pb.GenerateResponse:
        engine, requests = await self._generation(request, context, call)
        accs = [convert.UnaryAccumulator(r.request) for r in requests]
        async with contextlib.aclosing(generate_samples(engine, requests)) as chunks:
            async for j, chunk in chunks:
                call.tokens_arrived(j, len(chunk.token_ids))
                accs[j].add(chunk)
        call.fields["completion_tokens"] = sum(a.completion_tokens for a in accs)
        call.fields["finish"] = ",".join(a.finish_reason.value if a.finish_reason else "none" for a in accs)
        return convert.samples_response([a.response(self._receipt(engine, a.request, a.token_ids)) for a in accs])

    @guard_stream("GenerateStream")
    async def GenerateStream(
        self, request: pb.GenerateRequest, context: Context, call: Call
    ) -> AsyncGenerator[pb.GenerateStreamResponse, None]:
        engine, requests = await self._generation(request, context, call)
        await context.send_initial_metadata(
            (("seedstream-seed", str(requests[0].request.sampling.seed)), ("seedstream-request-id", call.request_id))
        )
        # The prompt echo rides on sample 0's first chunk, which must be the stream's first message.
        held: list[pb.GenerateStreamResponse] | None = [] if requests[0].request.prompt_logprobs else None
        finishes: dict[int, str] = {}
        done_tokens: dict[int, int] = {}
        sent: dict[int, list[int]] = {j: [] for j in range(len(requests))}  # each sample's tokens, for its signature
        async with contextlib.aclosing(generate_samples(engine, requests)) as chunks:
            async for j, chunk in chunks:
                call.tokens_arrived(j, len(chunk.token_ids))
                done_tokens[j] = chunk.completion_tokens
                call.fields["completion_tokens"] = sum(done_tokens.values())
                if chunk.finish_reason is not None:
                    finishes[j] = chunk.finish_reason.value
                last = chunk.finish_reason is not None
                req = requests[j].request
                sent[j].extend(chunk.token_ids)
                message = convert.stream_message(chunk, req, self._receipt(engine, req, sent[j]) if last else None)
                if held is not None and j != 0:
                    held.append(message)
                    continue
                yield message
                if held is not None:
                    for m in held:
                        yield m
                    held = None
        call.fields["finish"] = ",".join(finishes[j] for j in sorted(finishes))

    def _score_pairs(self, engine: Engine, request: pb.ScoreRequest) -> list[PreparedPair]:
        max_chars, max_tokens = self.state.input_caps(engine)
        check_count("pairs", len(request.pairs), MAX_PAIRS, "pairs")
        pairs = convert.score_pairs_in(request)
        check_chars("pairs", sum(len(c) + len(x) for c, x in pairs if isinstance(c, str)), max_chars)
        check_tokens("pairs", sum(len(c) + len(x) for c, x in pairs if not isinstance(c, str)), max_tokens)
        prepared = prepare_pairs(engine, pairs, request.truncate_context)
        check_tokens("pairs", sum(len(p.context_ids) + len(p.continuation_ids) for p in prepared), max_tokens)
        return prepared

    @guard_unary("Score")
    async def Score(self, request: pb.ScoreRequest, context: Context, call: Call) -> pb.ScoreResponse:
        engine = self.state.ready_engine()
        self._request_id(request, context, call)
        prepared = await _off_loop(request, self._score_pairs, engine, request)
        call.fields["pairs"] = len(prepared)
        call.fields["tokens"] = sum(len(p.context_ids) + len(p.continuation_ids) for p in prepared)
        scores = await score_pairs(engine, prepared, call.request_id, call.client)
        scored = [ids for p in prepared for ids in (p.context_ids, p.continuation_ids)]
        response = pb.ScoreResponse(
            results=[convert.score_result_pb(s) for s in scores], receipt=score_receipt(engine.info, scored)
        )
        if self.state.options.signer is not None:
            self.state.options.signer.sign(response.receipt, signing.output_sha256_score(response.results))
        return response

    def _rolling(
        self, engine: Engine, request: pb.ScoreRollingRequest, max_length: int
    ) -> tuple[list[int], list[PreparedPair]]:
        """The text's token ids and its windows, checked."""
        max_chars, max_tokens = self.state.input_caps(engine)
        which = request.WhichOneof("input")
        if which is None:
            raise ParamError("input", "set one of text or token_ids")
        if which == "text":
            check_chars("text", len(request.text), max_chars)
            ids = engine.tokenize(request.text)
            check_tokens("text", len(ids), max_tokens)
        else:
            check_tokens("token_ids", len(request.token_ids.ids), max_tokens)
            ids = list(request.token_ids.ids)
        return ids, rolling_pairs(engine, ids, max_length)

    @guard_unary("ScoreRolling")
    async def ScoreRolling(
        self, request: pb.ScoreRollingRequest, context: Context, call: Call
    ) -> pb.ScoreRollingResponse:
        engine = self.state.ready_engine()
        self._request_id(request, context, call)
        max_length = request.max_length if request.HasField("max_length") else engine.info.max_context - 1
        ids, windows = await _off_loop(request, self._rolling, engine, request, max_length)
        call.fields["tokens"] = len(ids)
        result = await score_rolling(engine, windows, call.request_id, call.client)
        response = pb.ScoreRollingResponse(
            token_ids=ids,
            logprobs=result.logprobs,
            logprob=math.fsum(result.logprobs),
            greedy_token_ids=result.greedy_ids,
            num_windows=result.num_windows,
            max_length=max_length,
            receipt=score_receipt(engine.info, [ids, [max_length]]),
            cached_tokens=result.cached_tokens,
        )
        if self.state.options.signer is not None:
            r = response
            output = signing.output_sha256_rolling(r.token_ids, r.logprobs, r.greedy_token_ids, r.num_windows)
            self.state.options.signer.sign(r.receipt, output)
        return response

    def _tokenize(self, engine: Engine, request: pb.TokenizeRequest) -> tuple[list[int], list[str]]:
        max_chars, max_tokens = self.state.input_caps(engine)
        which = request.WhichOneof("input")
        if which is None:
            raise ParamError("input", "set one of text or messages")
        if which == "text":
            check_chars("text", len(request.text), max_chars)
            special = request.add_special_tokens if request.HasField("add_special_tokens") else True
            ids = engine.tokenize(request.text, special)
        else:
            if request.HasField("add_special_tokens"):
                raise ParamError("add_special_tokens", "applies to text only; chat rendering decides special tokens")
            check_chars("messages", convert.chat_chars(request.messages), max_chars)
            ids = render_chat(engine, convert.chat_messages(request.messages))
        check_tokens(which, len(ids), max_tokens)
        return ids, _token_texts(engine, ids)

    @guard_unary("Tokenize")
    async def Tokenize(self, request: pb.TokenizeRequest, context: Context, call: Call) -> pb.TokenizeResponse:
        engine = self.state.ready_engine()
        ids, texts = await _off_loop(request, self._tokenize, engine, request)
        call.fields["tokens"] = len(ids)
        return pb.TokenizeResponse(token_ids=ids, tokens=texts)

    @guard_unary("GetModelInfo")
    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: Context, call: Call
    ) -> pb.GetModelInfoResponse:
        engine = self.state.ready_engine()
        config = engine.config
        max_chars, max_tokens = self.state.input_caps(engine)
        info = convert.model_info(
            engine.info,
            server_version=self.state.options.server_version,
            has_chat_template=engine.text.has_chat_template,
            max_new_tokens_limit=config.max_new_tokens_limit,
            default_max_new_tokens=self.state.options.default_max_new_tokens,
            max_batch_size=config.max_batch_size,
            max_queue=config.max_queue,
            max_input_chars=max_chars,
            max_input_tokens=max_tokens,
            max_deadline=self.state.options.limits.max_deadline or 0.0,
            prefix_cache=getattr(engine, "prefix_cache", None),
            speculation=engine.speculation() if hasattr(engine, "speculation") else None,
        )
        if self.state.options.signer is not None:
            info.receipt_public_key = self.state.options.signer.public_key
        return info

    def _receipt(self, engine: Engine, request: GenerationRequest, tokens: Sequence[int]) -> pb.ReproducibilityReceipt:
        return completion_receipt(engine.info, request, tokens, self.state.options.signer)


def _token_texts(engine: Engine, ids: list[int]) -> list[str]:
    """Each token's text on its own, special tokens shown (unlike generated text, which omits them)."""
    return engine.text.token_texts(ids)


async def _off_loop(request: Message, fn: Callable[..., _Result], *args: Any) -> _Result:
    """maybe_threaded, sized by the request's encoded bytes."""
    return await maybe_threaded(request.ByteSize(), fn, *args)
