"""Protobuf <-> domain types. No I/O, no engine calls beyond text helpers passed in."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from seedstream.sampler import MAX_TOP_N, SamplingParams
from seedstream.server.engine.types import (
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    TopLogprob,
)
from seedstream.server.service.errors import ParamError
from seedstream.server.service.inputs import MAX_CHAT_MESSAGES, check_count
from seedstream.v1 import textgen_pb2 as pb
from seedstream.v1.protocol import (
    MAX_LOGIT_BIAS,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    OPTIONAL_SAMPLING_FIELDS,
)

if TYPE_CHECKING:
    from seedstream.server.engine.prefix_cache import PrefixCache
    from seedstream.server.engine.scoring import PairScore, ScorePair
    from seedstream.server.engine.speculation import SpeculationStats

UINT32_LIMIT = 2**32


def chat_messages(msgs: pb.ChatMessages) -> list[dict[str, str]]:
    """Chat turns as the dicts a chat template takes; rejects an empty chat or an empty role."""
    if not msgs.messages:
        raise ParamError("messages", "the chat is empty: give at least one message")
    out = []
    for i, m in enumerate(msgs.messages):
        if not m.role:
            raise ParamError(f"messages[{i}].role", "must be a non-empty role such as 'user'")
        out.append({"role": m.role, "content": m.content})
    return out


def chat_chars(messages: pb.ChatMessages) -> int:
    """Characters of a ChatMessages proto (roles and contents), after checking the message count."""
    check_count("messages", len(messages.messages), MAX_CHAT_MESSAGES, "messages")
    return sum(len(m.role) + len(m.content) for m in messages.messages)


def check_wire_counts(req: pb.GenerateRequest) -> None:
    """Ranges the proto's 64-bit integers allow but the contract does not, and list sizes, checked
    before anything is copied (uint64 on the wire: an oversized value is rejected, never truncated).
    The list limits and their messages are validation's own, only checked earlier."""
    for field in ("top_k", "sample_index"):
        value = getattr(req, field)
        if value >= UINT32_LIMIT:
            raise ParamError(field, f"{value} out of range: allowed [0, 2^32)")
    check_count("logit_bias", len(req.logit_bias), MAX_LOGIT_BIAS)
    check_count("stop_token_ids", len(req.stop_token_ids), MAX_STOP_TOKEN_IDS)
    check_count("stop", len(req.stop), MAX_STOP_STRINGS, "strings")


def sampling_params(req: pb.GenerateRequest, seed: int) -> SamplingParams:
    """SamplingParams from the request's set fields; unset fields keep the sampler's defaults."""
    kwargs = {name: getattr(req, name) for name in OPTIONAL_SAMPLING_FIELDS if req.HasField(name)}
    if req.logit_bias:
        kwargs["logit_bias"] = dict(sorted(req.logit_bias.items()))
    return SamplingParams(seed=seed, **kwargs)  # the constructor checks nothing: validation does


def generation_request(
    req: pb.GenerateRequest,
    prompt_token_ids: Sequence[int],
    seed: int,
    request_id: str,
    default_max_new_tokens: int,
    client: str = "",
) -> GenerationRequest:
    """The engine's request for a GenerateRequest whose input is already tokenized."""
    return GenerationRequest(
        prompt_token_ids=tuple(prompt_token_ids),
        sampling=sampling_params(req, seed),
        max_new_tokens=req.max_new_tokens if req.HasField("max_new_tokens") else default_max_new_tokens,
        min_new_tokens=req.min_new_tokens if req.HasField("min_new_tokens") else 0,
        stop=tuple(req.stop),
        stop_token_ids=tuple(req.stop_token_ids),
        ignore_eos=req.ignore_eos,
        top_logprobs=req.top_logprobs,
        sample_index=req.sample_index,
        prompt_logprobs=req.echo_prompt_logprobs,
        request_id=request_id,
        logprobs_mode=req.logprobs_mode or "raw",
        client=client,
        resume_token_ids=tuple(req.resume_token_ids),
    )


def num_samples(req: pb.GenerateRequest) -> int:
    return req.n if req.HasField("n") else 1


def top_logprobs_pb(rows: Sequence[Sequence[TopLogprob]]) -> list[pb.TopLogprobs]:
    return [
        pb.TopLogprobs(alternatives=[pb.TopLogprob(token_id=t.token_id, text=t.text, logprob=t.logprob) for t in row])
        for row in rows
    ]


def stream_message(
    chunk: GenerationChunk,
    request: GenerationRequest,
    receipt_pb: pb.ReproducibilityReceipt | None,
) -> pb.GenerateStreamResponse:
    msg = pb.GenerateStreamResponse(
        text=chunk.text,
        token_ids=chunk.token_ids,
        logprobs=chunk.logprobs,
        top_logprobs=top_logprobs_pb(chunk.top_logprobs),
        seed=request.sampling.seed,
        finish_reason=(
            cast("pb.FinishReason", chunk.finish_reason.to_pb())
            if chunk.finish_reason
            else pb.FINISH_REASON_UNSPECIFIED
        ),
        prompt_tokens=len(request.prompt_token_ids),
        completion_tokens=chunk.completion_tokens,
        request_id=request.request_id,
        sample_index=request.sample_index,
        cached_tokens=chunk.cached_tokens,
    )
    if receipt_pb is not None:
        msg.receipt.CopyFrom(receipt_pb)
    if chunk.prompt_logprobs is not None:
        msg.prompt_token_ids.extend(request.prompt_token_ids)
        msg.prompt_logprobs.extend(echoed_logprobs(chunk.prompt_logprobs))
    return msg


def echoed_logprobs(prompt_logprobs: Sequence[float | None]) -> list[float]:
    """The engine gives None for the first prompt token (nothing predicts it); the proto omits it."""
    return [float(x) for x in cast("Sequence[float]", prompt_logprobs[1:])]  # only the first is None


class UnaryAccumulator:
    """Concatenates a stream's chunks into the unary response (so unary == joined deltas by construction)."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.top: list[list[TopLogprob]] = []
        self.finish_reason: FinishReason | None = None
        self.completion_tokens = 0
        self.prompt_logprobs: list[float] | None = None
        self.cached_tokens = 0

    def add(self, chunk: GenerationChunk) -> None:
        self.cached_tokens = chunk.cached_tokens
        self.text.append(chunk.text)
        self.token_ids.extend(chunk.token_ids)
        self.logprobs.extend(chunk.logprobs)
        self.top.extend(chunk.top_logprobs)
        self.completion_tokens = chunk.completion_tokens
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        if chunk.prompt_logprobs is not None:
            self.prompt_logprobs = echoed_logprobs(chunk.prompt_logprobs)

    def response(self, receipt_pb: pb.ReproducibilityReceipt) -> pb.GenerateResponse:
        req = self.request
        return pb.GenerateResponse(
            text="".join(self.text),
            token_ids=self.token_ids,
            logprobs=self.logprobs,
            top_logprobs=top_logprobs_pb(self.top),
            seed=req.sampling.seed,
            finish_reason=cast("pb.FinishReason", (self.finish_reason or FinishReason.CANCELLED).to_pb()),
            prompt_tokens=len(req.prompt_token_ids),
            completion_tokens=self.completion_tokens,
            request_id=req.request_id,
            sample_index=req.sample_index,
            receipt=receipt_pb,
            prompt_token_ids=req.prompt_token_ids if self.prompt_logprobs is not None else (),
            prompt_logprobs=self.prompt_logprobs or (),
            cached_tokens=self.cached_tokens,
        )


def samples_response(responses: Sequence[pb.GenerateResponse]) -> pb.GenerateResponse:
    """The unary response for n samples: sample 0 at the top level, every sample in `samples`."""
    if len(responses) == 1:
        return responses[0]
    top = pb.GenerateResponse()
    top.CopyFrom(responses[0])
    for r in responses:
        sample = top.samples.add()
        sample.CopyFrom(r)
        sample.ClearField("prompt_token_ids")
        sample.ClearField("prompt_logprobs")
    return top


def score_pairs_in(req: pb.ScoreRequest) -> list[ScorePair]:
    """Each pair as (context, continuation): two strings, or two lists of token ids."""
    pairs: list[ScorePair] = []
    for i, p in enumerate(req.pairs):
        which = p.WhichOneof("pair")
        if which is None:
            raise ParamError(f"pairs[{i}]", "set one of text or tokens")
        if which == "text":
            pairs.append((p.text.context, p.text.continuation))
        else:
            pairs.append((list(p.tokens.context), list(p.tokens.continuation)))
    return pairs


def score_result_pb(score: PairScore) -> pb.ScoreResult:
    """A PairScore (engine.scoring) as a ScoreResult message."""
    pair = score.pair
    return pb.ScoreResult(
        context_tokens=len(pair.context_ids),
        continuation_tokens=len(pair.continuation_ids),
        continuation_token_ids=pair.continuation_ids,
        logprobs=score.logprobs,
        logprob=math.fsum(score.logprobs),
        is_greedy=score.is_greedy,
        greedy_token_ids=score.greedy_ids,
        truncated_tokens=pair.truncated_tokens,
        cached_tokens=score.cached_tokens,
    )


def model_info(
    info: ModelInfo,
    *,
    server_version: str,
    has_chat_template: bool,
    max_new_tokens_limit: int,
    default_max_new_tokens: int,
    max_batch_size: int,
    max_queue: int,
    max_input_chars: int = 0,
    max_input_tokens: int = 0,
    max_deadline: float = 0.0,
    prefix_cache: PrefixCache | None = None,
    speculation: SpeculationStats | None = None,
) -> pb.GetModelInfoResponse:
    msg = pb.GetModelInfoResponse(
        model_id=info.model_id,
        model_sha256=info.model_sha256,
        model_identity=info.model_identity,
        dtype=info.dtype,
        device=info.device,
        vocab_size=info.vocab_size,
        max_context=info.max_context,
        eos_token_ids=list(info.eos_token_ids),
        engine_version=info.engine_version,
        sampler_version=info.sampler_version,
        server_version=server_version,
        has_chat_template=has_chat_template,
        max_new_tokens_limit=max_new_tokens_limit,
        default_max_new_tokens=default_max_new_tokens,
        max_batch_size=max_batch_size,
        max_queue=max_queue,
        weight_format=info.weight_format,
        max_input_chars=max_input_chars,
        max_input_tokens=max_input_tokens,
        max_deadline_seconds=max_deadline,
        max_stop_strings=MAX_STOP_STRINGS,
        max_stop_string_chars=MAX_STOP_STRING_CHARS,
        max_top_logprobs=MAX_TOP_N,
    )
    if prefix_cache is not None:  # the engine's PrefixCache
        stats = prefix_cache.stats
        msg.prefix_cache_bytes = stats.bytes
        msg.prefix_cache_budget_bytes = prefix_cache.budget_bytes
        msg.prefix_cache_hit_tokens = stats.hit_tokens
        msg.prefix_cache_miss_tokens = stats.miss_tokens
        msg.prefix_cache_block_tokens = prefix_cache.block_tokens
    if speculation is not None:  # the engine's SpeculationStats
        msg.speculative_tokens = speculation.tokens
        msg.speculative_draft_tokens = speculation.drafted
        msg.speculative_accepted_tokens = speculation.accepted
    return msg
