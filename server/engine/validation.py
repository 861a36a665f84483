"""Request validation, in one place: each error is a ParamError naming the field and its allowed range,
and what passes comes out as a validated type, the only kind the engine runs."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from seedstream.sampler import MAX_TOP_N, SamplingParamError
from seedstream.v1.protocol import (
    MAX_LOGIT_BIAS,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
)

from .config import EngineConfig
from .resume import validate_resume
from .types import GenerationRequest, ModelInfo, ParamError, ScoreRequest

LOGPROBS_MODES = ("raw", "processed")
_Valid = TypeVar("_Valid")
MAX_SAMPLES = 64
SAMPLE_INDEX_LIMIT = 2**32  # sample_index + n must not pass it (the proto field is uint32)


@dataclasses.dataclass(frozen=True)
class ValidRequest:
    """One sample of a generation that passed validate_generation(): what Engine.generate runs.

    Made only by this module, so holding one means the request was checked, once.
    """

    request: GenerationRequest


@dataclasses.dataclass(frozen=True)
class ValidScore:
    """A scoring request that passed validate_score(): what Engine.score runs. Made by this module,
    and by rolling_pairs() for the windows of token ids it checked (valid by construction)."""

    request: ScoreRequest

    def for_caller(self, request_id: str, client: str) -> ValidScore:
        """The same request on behalf of a call: its id and client change no token, so it stays valid."""
        return ValidScore(dataclasses.replace(self.request, request_id=request_id, client=client))


def validate_generation(
    req: GenerationRequest,
    n: int,
    info: ModelInfo,
    config: EngineConfig,
    eos_token_ids: frozenset[int],
    echo_every_sample: bool = False,
) -> tuple[ValidRequest, ...]:
    """The n samples of `req`, checked; raise ParamError for the first out-of-range field.

    Sample j is `req` with sample_index + j, run as its own sequence. The samples differ only in
    sample_index, which the n check bounds, so checking `req` checks them all. Only the first echoes
    the prompt's logprobs (they are the same for every sample) unless `echo_every_sample`.
    """
    _check_samples(req, n)
    _check_request(req, info, config)
    validate_resume(req, eos_token_ids, info.vocab_size, info.max_context)
    if req.sampling.seed is None:
        raise ParamError("seed", "must be resolved before the engine (the RPC layer draws one)")
    return tuple(
        ValidRequest(
            dataclasses.replace(
                req,
                sample_index=req.sample_index + j,
                prompt_logprobs=req.prompt_logprobs and (j == 0 or echo_every_sample),
            )
        )
        for j in range(n)
    )


def _check_samples(req: GenerationRequest, n: int) -> None:
    if not 1 <= n <= MAX_SAMPLES:
        raise ParamError("n", f"{n} out of range: allowed [1, {MAX_SAMPLES}]")
    if req.sample_index + n > SAMPLE_INDEX_LIMIT:
        raise ParamError("n", f"sample_index + n = {req.sample_index + n}; allowed at most 2^32")
    if n > 1 and req.resume_token_ids:
        raise ParamError(
            "resume_token_ids",
            "cannot be combined with n > 1: resume one sample at a time (n = 1 with its sample_index)",
        )


def _check_request(req: GenerationRequest, info: ModelInfo, config: EngineConfig) -> None:
    vocab, context = info.vocab_size, info.max_context
    if not req.prompt_token_ids:
        raise ParamError("prompt", "the input is empty: give a non-empty prompt, messages or prompt_token_ids")
    if len(req.prompt_token_ids) >= context:
        raise ParamError(
            "prompt", f"{len(req.prompt_token_ids)} tokens; allowed at most {context - 1} (model context {context})"
        )
    bad = next((t for t in req.prompt_token_ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise ParamError("prompt_token_ids", f"token id {bad} out of range: allowed [0, {vocab})")
    if not 1 <= req.max_new_tokens <= config.max_new_tokens_limit:
        raise ParamError(
            "max_new_tokens", f"{req.max_new_tokens} out of range: allowed [1, {config.max_new_tokens_limit}]"
        )
    if not 0 <= req.min_new_tokens <= req.max_new_tokens:
        raise ParamError(
            "min_new_tokens", f"{req.min_new_tokens} out of range: allowed [0, max_new_tokens={req.max_new_tokens}]"
        )
    if not 0 <= req.top_logprobs <= MAX_TOP_N:
        raise ParamError("top_logprobs", f"{req.top_logprobs} out of range: allowed [0, {MAX_TOP_N}]")
    if req.logprobs_mode not in LOGPROBS_MODES:
        raise ParamError("logprobs_mode", f"{req.logprobs_mode!r}: allowed {', '.join(LOGPROBS_MODES)}")
    if req.sample_index < 0:
        raise ParamError("sample_index", f"{req.sample_index} out of range: allowed >= 0")
    if len(req.stop) > MAX_STOP_STRINGS:
        raise ParamError("stop", f"{len(req.stop)} strings; allowed at most {MAX_STOP_STRINGS}")
    if any(not s or len(s) > MAX_STOP_STRING_CHARS for s in req.stop):
        raise ParamError("stop", f"each stop string must have 1 to {MAX_STOP_STRING_CHARS} characters")
    if len(req.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise ParamError("stop_token_ids", f"{len(req.stop_token_ids)} entries; allowed at most {MAX_STOP_TOKEN_IDS}")
    if len(req.sampling.logit_bias) > MAX_LOGIT_BIAS:
        raise ParamError("logit_bias", f"{len(req.sampling.logit_bias)} entries; allowed at most {MAX_LOGIT_BIAS}")
    bad = next((t for t in req.stop_token_ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise ParamError("stop_token_ids", f"token id {bad} out of range: allowed [0, {vocab})")
    try:
        req.sampling.validate(vocab_size=vocab)
    except SamplingParamError as exc:
        raise ParamError(exc.field, str(exc)) from None


def validate_score(req: ScoreRequest, info: ModelInfo) -> ValidScore:
    """`req`, checked: context and continuation non-empty, in vocabulary, and fitting the context."""
    for field, ids in (("context", req.context_ids), ("continuation", req.continuation_ids)):
        if not ids:
            raise ParamError(field, "must contain at least one token")
        bad = next((t for t in ids if not 0 <= t < info.vocab_size), None)
        if bad is not None:
            raise ParamError(field, f"token id {bad} out of range: allowed [0, {info.vocab_size})")
    total = len(req.context_ids) + len(req.continuation_ids)
    if total > info.max_context:
        raise ParamError(
            "continuation", f"context + continuation is {total} tokens; allowed at most {info.max_context}"
        )
    return ValidScore(req)


def require(valid: object, kind: type[_Valid]) -> _Valid:
    """`valid` when it is a `kind` (ValidRequest or ValidScore), else TypeError: the engine runs nothing unchecked."""
    if not isinstance(valid, kind):
        raise TypeError(f"expected a {kind.__name__} (from the engine's validate methods), got {type(valid).__name__}")
    return valid
