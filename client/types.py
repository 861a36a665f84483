"""Typed, immutable results of the client calls (plain dataclasses, no protobuf leaks)."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from typing import Any, cast

from seedstream.v1 import textgen_pb2 as pb
from seedstream.v1.protocol import FinishReason as FinishReason  # re-exported: part of the client API


class HealthStatus(str, enum.Enum):
    """grpc.health.v1 serving status."""

    UNKNOWN = "UNKNOWN"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    SERVICE_UNKNOWN = "SERVICE_UNKNOWN"


@dataclasses.dataclass(frozen=True)
class TopLogprob:
    token_id: int
    text: str
    logprob: float


@dataclasses.dataclass(frozen=True)
class EffectiveSampling:
    """The parameters a completion ran with, every server default filled in."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    logit_bias: tuple[tuple[int, float], ...]
    max_new_tokens: int
    min_new_tokens: int
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...]
    ignore_eos: bool

    @classmethod
    def from_pb(cls, m: pb.EffectiveSampling) -> EffectiveSampling:
        return cls(
            temperature=m.temperature,
            top_k=m.top_k,
            top_p=m.top_p,
            min_p=m.min_p,
            repetition_penalty=m.repetition_penalty,
            presence_penalty=m.presence_penalty,
            frequency_penalty=m.frequency_penalty,
            logit_bias=tuple(sorted(m.logit_bias.items())),
            max_new_tokens=m.max_new_tokens,
            min_new_tokens=m.min_new_tokens,
            stop=tuple(m.stop),
            stop_token_ids=tuple(m.stop_token_ids),
            ignore_eos=m.ignore_eos,
        )


@dataclasses.dataclass(frozen=True)
class Receipt:
    """Everything that determines a completion's token ids (see ReproducibilityReceipt in the proto).

    Two completions with equal `digest` are bit-identical by seedstream's
    promise; `differences()` says which inputs to the promise differ.
    """

    model_id: str
    model_sha256: str
    dtype: str
    device: str
    engine_version: str
    sampler_version: str
    seed: int
    sample_index: int
    sampling: EffectiveSampling
    input_sha256: str
    digest: str
    weight_format: str = ""
    # Weights, config, generation config, tokenizer and chat template ("" from a server before receipt_version 2).
    model_identity: str = ""
    receipt_version: int = 0  # 2: with model_identity; 1 or 0 (an older server): without

    # The fields the digest covers (model_id is a name, not content).
    DETERMINING = (
        "model_sha256",
        "model_identity",
        "dtype",
        "weight_format",
        "device",
        "engine_version",
        "sampler_version",
        "seed",
        "sample_index",
        "sampling",
        "input_sha256",
        "receipt_version",
    )

    @classmethod
    def from_pb(cls, m: pb.ReproducibilityReceipt) -> Receipt:
        return cls(
            model_id=m.model_id,
            model_sha256=m.model_sha256,
            dtype=m.dtype,
            device=m.device,
            engine_version=m.engine_version,
            sampler_version=m.sampler_version,
            seed=m.seed,
            sample_index=m.sample_index,
            sampling=EffectiveSampling.from_pb(m.sampling),
            input_sha256=m.input_sha256,
            digest=m.digest,
            weight_format=m.weight_format,
            model_identity=m.model_identity,
            receipt_version=m.receipt_version,
        )

    def differences(self, other: Receipt) -> list[str]:
        """Names of the determining fields that differ (empty: the runs should be token-identical)."""
        out = []
        for name in self.DETERMINING:
            a, b = getattr(self, name), getattr(other, name)
            if name == "sampling" and a != b:
                out += [f"sampling.{f.name}" for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
            elif a != b:
                out.append(name)
        return out

    def reproduces(self, other: Receipt) -> bool:
        """True when the two runs should be token-identical."""
        return not self.differences(other)


def receipts_match(a: Receipt | None, b: Receipt | None) -> bool:
    """Whether two receipts promise identical tokens (or scores); False when either is missing."""
    return a is not None and b is not None and a.reproduces(b)


def _completion_fields(m: pb.GenerateResponse | pb.GenerateStreamResponse) -> dict[str, Any]:
    """The fields GenerateResponse and GenerateStreamResponse share (same names and numbers)."""
    return dict(
        text=m.text,
        token_ids=tuple(m.token_ids),
        logprobs=tuple(m.logprobs),
        top_logprobs=_top(m.top_logprobs),
        seed=m.seed,
        finish_reason=FinishReason.from_pb(m.finish_reason),
        prompt_tokens=m.prompt_tokens,
        completion_tokens=m.completion_tokens,
        request_id=m.request_id,
        sample_index=m.sample_index,
        receipt=Receipt.from_pb(m.receipt) if m.HasField("receipt") else None,
        prompt_token_ids=tuple(m.prompt_token_ids),
        prompt_logprobs=tuple(m.prompt_logprobs),
        cached_tokens=m.cached_tokens,
    )


def _top(rows: Iterable[pb.TopLogprobs]) -> tuple[tuple[TopLogprob, ...], ...]:
    return tuple(tuple(TopLogprob(t.token_id, t.text, t.logprob) for t in row.alternatives) for row in rows)


@dataclasses.dataclass(frozen=True)
class GenerateResult:
    """A whole completion."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # raw-distribution logprob of each token in token_ids
    top_logprobs: tuple[tuple[TopLogprob, ...], ...]  # per token, when requested
    seed: int  # the seed used (yours, or the one the server drew)
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    request_id: str
    sample_index: int
    receipt: Receipt | None
    prompt_token_ids: tuple[int, ...] = ()  # with echo_prompt_logprobs
    prompt_logprobs: tuple[float, ...] = ()  # logprob of prompt_token_ids[1:], with echo_prompt_logprobs
    cached_tokens: int = 0  # prompt positions the server took from its prefix cache (changes no token)
    # Every sample (n >= 1), sample_index ascending, each with no samples or prompt echo of its own;
    # the fields above repeat the first sample.
    samples: tuple[GenerateResult, ...] = ()

    @classmethod
    def from_pb(cls, m: pb.GenerateResponse) -> GenerateResult:
        result = cls._one_from_pb(m)
        samples = tuple(cls._one_from_pb(s) for s in m.samples)
        bare = dataclasses.replace(result, prompt_token_ids=(), prompt_logprobs=())
        return dataclasses.replace(result, samples=samples or (bare,))

    @classmethod
    def _one_from_pb(cls, m: pb.GenerateResponse) -> GenerateResult:
        fields = _completion_fields(m)
        fields["finish_reason"] = fields["finish_reason"] or FinishReason.CANCELLED
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (enums as their string values); `samples` only when there are several."""
        out = _as_dict(self)
        if len(self.samples) <= 1:
            del out["samples"]
        return out


@dataclasses.dataclass(frozen=True)
class GenerateChunk:
    """One delta of a streamed completion; the last one has `finish_reason` and `receipt`."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    top_logprobs: tuple[tuple[TopLogprob, ...], ...]
    seed: int
    finish_reason: FinishReason | None  # None until the last chunk
    prompt_tokens: int
    completion_tokens: int  # running total
    request_id: str
    sample_index: int  # with n > 1, deltas of the samples interleave: group them by this
    receipt: Receipt | None
    prompt_token_ids: tuple[int, ...] = ()  # first chunk only, with echo_prompt_logprobs
    prompt_logprobs: tuple[float, ...] = ()  # first chunk only, with echo_prompt_logprobs
    cached_tokens: int = 0  # prompt positions the server took from its prefix cache (changes no token)

    @classmethod
    def from_pb(cls, m: pb.GenerateStreamResponse) -> GenerateChunk:
        return cls(**_completion_fields(m))

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


def join_chunks(chunks: Iterable[GenerateChunk]) -> GenerateResult:
    """The GenerateResult equal to the unary response, from a complete stream's chunks (any n)."""
    chunks = list(chunks)
    by_sample: dict[int, list[GenerateChunk]] = {}
    for c in chunks:
        by_sample.setdefault(c.sample_index, []).append(c)
    if not chunks or any(group[-1].finish_reason is None for group in by_sample.values()):
        raise ValueError("join_chunks needs a complete stream (each sample's last chunk has a finish_reason)")
    samples = tuple(_join_sample(by_sample[j]) for j in sorted(by_sample))
    echo = next((c for c in chunks if c.prompt_logprobs or c.prompt_token_ids), None)
    return dataclasses.replace(
        samples[0],
        samples=samples,
        prompt_token_ids=echo.prompt_token_ids if echo else (),
        prompt_logprobs=echo.prompt_logprobs if echo else (),
    )


def _join_sample(chunks: list[GenerateChunk]) -> GenerateResult:
    last = chunks[-1]
    return GenerateResult(
        text="".join(c.text for c in chunks),
        token_ids=tuple(t for c in chunks for t in c.token_ids),
        logprobs=tuple(x for c in chunks for x in c.logprobs),
        top_logprobs=tuple(x for c in chunks for x in c.top_logprobs),
        seed=last.seed,
        finish_reason=cast(FinishReason, last.finish_reason),  # join_chunks checked it is set
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
        request_id=last.request_id,
        sample_index=last.sample_index,
        receipt=last.receipt,
        cached_tokens=chunks[0].cached_tokens,
    )


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """The log-likelihood of one (context, continuation) pair."""

    context_tokens: int  # after any truncation
    continuation_tokens: int
    continuation_token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # raw logprob of each continuation token
    logprob: float  # their sum
    is_greedy: bool  # greedy decoding would produce exactly the continuation
    greedy_token_ids: tuple[int, ...]  # the argmax at each continuation position
    truncated_tokens: int  # context tokens dropped from the left (truncate_context)
    cached_tokens: int = 0  # context positions the server took from its prefix cache (changes no score)

    @classmethod
    def from_pb(cls, m: pb.ScoreResult) -> ScoreResult:
        return cls(
            m.context_tokens,
            m.continuation_tokens,
            tuple(m.continuation_token_ids),
            tuple(m.logprobs),
            m.logprob,
            m.is_greedy,
            tuple(m.greedy_token_ids),
            m.truncated_tokens,
            m.cached_tokens,
        )


class ScoreResults(tuple[ScoreResult, ...]):
    """ScoreResult per pair, in request order, plus the call's `receipt`."""

    receipt: Receipt | None

    def __new__(cls, results: Iterable[ScoreResult], receipt: Receipt | None) -> ScoreResults:
        self = super().__new__(cls, results)
        self.receipt = receipt
        return self

    @classmethod
    def from_pb(cls, m: pb.ScoreResponse) -> ScoreResults:
        return cls(
            (ScoreResult.from_pb(r) for r in m.results), Receipt.from_pb(m.receipt) if m.HasField("receipt") else None
        )


@dataclasses.dataclass(frozen=True)
class RollingScore:
    """A text's rolling log-likelihood (every token scored once, in windows)."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # one per token of token_ids
    logprob: float  # their sum
    greedy_token_ids: tuple[int, ...]
    num_windows: int
    max_length: int  # the window length used
    receipt: Receipt | None
    cached_tokens: int = 0  # positions over all windows taken from the prefix cache

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @classmethod
    def from_pb(cls, m: pb.ScoreRollingResponse) -> RollingScore:
        return cls(
            tuple(m.token_ids),
            tuple(m.logprobs),
            m.logprob,
            tuple(m.greedy_token_ids),
            m.num_windows,
            m.max_length,
            Receipt.from_pb(m.receipt) if m.HasField("receipt") else None,
            m.cached_tokens,
        )


@dataclasses.dataclass(frozen=True)
class TokenizeResult:
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]  # each token decoded on its own

    @classmethod
    def from_pb(cls, m: pb.TokenizeResponse) -> TokenizeResult:
        return cls(tuple(m.token_ids), tuple(m.tokens))

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the server runs (GetModelInfo)."""

    model_id: str
    model_sha256: str
    dtype: str
    device: str
    vocab_size: int
    max_context: int
    eos_token_ids: tuple[int, ...]
    engine_version: str
    sampler_version: str
    server_version: str
    has_chat_template: bool
    max_new_tokens_limit: int
    default_max_new_tokens: int
    max_batch_size: int
    max_queue: int
    weight_format: str = ""
    max_input_chars: int = 0  # 0: not reported (an older server)
    max_input_tokens: int = 0
    max_deadline_seconds: float = 0.0  # 0: no server limit (or not reported)
    # GenerateRequest's list limits (stop strings, characters per stop string, top_logprobs); 0: not reported.
    max_stop_strings: int = 0
    max_stop_string_chars: int = 0
    max_top_logprobs: int = 0
    # The exact prefix cache: bytes held, budget (0 = off), prompt positions served from it and
    # computed since the server started, positions per block.
    prefix_cache_bytes: int = 0
    prefix_cache_budget_bytes: int = 0
    prefix_cache_hit_tokens: int = 0
    prefix_cache_miss_tokens: int = 0
    prefix_cache_block_tokens: int = 0
    # Exact speculative decoding: most tokens drafted per step (0 = off), tokens drafted and kept since start.
    speculative_tokens: int = 0
    speculative_draft_tokens: int = 0
    speculative_accepted_tokens: int = 0
    # Weights, config, generation config, tokenizer and chat template (hex SHA-256); "" from an older server.
    model_identity: str = ""

    @classmethod
    def from_pb(cls, m: pb.GetModelInfoResponse) -> ModelInfo:
        values = {f.name: getattr(m, f.name) for f in dataclasses.fields(cls)}
        values["eos_token_ids"] = tuple(m.eos_token_ids)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


def _as_dict(value: Any) -> dict[str, Any]:
    out: dict[str, Any] = _jsonable(value)
    return out


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN never comes from the server; keep JSON valid anyway
        return None
    return value
