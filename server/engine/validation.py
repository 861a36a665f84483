"""Request validation: every error names the field and its allowed range."""

from __future__ import annotations

import re

from .config import EngineConfig
from .types import GenerationRequest, InvalidRequest, ModelInfo, ScoreRequest

MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
LOGPROBS_MODES = ("raw", "processed")
MAX_LOGIT_BIAS = 1024  # entries per request (OpenAI allows 300); each costs sampler work every step
MAX_STOP_TOKEN_IDS = 1024


def validate_request(req: GenerationRequest, info: ModelInfo, config: EngineConfig) -> None:
    """Raise InvalidRequest for the first out-of-range field."""
    vocab, context = info.vocab_size, info.max_context
    if not req.prompt_token_ids:
        raise InvalidRequest("prompt", "the input is empty: give a non-empty prompt, messages or prompt_token_ids")
    if len(req.prompt_token_ids) >= context:
        raise InvalidRequest("prompt", f"{len(req.prompt_token_ids)} tokens; allowed at most {context - 1} (model context {context})")
    bad = next((t for t in req.prompt_token_ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise InvalidRequest("prompt_token_ids", f"token id {bad} out of range: allowed [0, {vocab})")
    if not 1 <= req.max_new_tokens <= config.max_new_tokens_limit:
        raise InvalidRequest("max_new_tokens", f"{req.max_new_tokens} out of range: allowed [1, {config.max_new_tokens_limit}]")
    if not 0 <= req.min_new_tokens <= req.max_new_tokens:
        raise InvalidRequest("min_new_tokens", f"{req.min_new_tokens} out of range: allowed [0, max_new_tokens={req.max_new_tokens}]")
    if not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidRequest("top_logprobs", f"{req.top_logprobs} out of range: allowed [0, {MAX_TOP_LOGPROBS}]")
    if req.logprobs_mode not in LOGPROBS_MODES:
        raise InvalidRequest("logprobs_mode", f"{req.logprobs_mode!r}: allowed {', '.join(LOGPROBS_MODES)}")
    if req.sample_index < 0:
        raise InvalidRequest("sample_index", f"{req.sample_index} out of range: allowed >= 0")
    if len(req.stop) > MAX_STOP_STRINGS:
        raise InvalidRequest("stop", f"{len(req.stop)} strings; allowed at most {MAX_STOP_STRINGS}")
    if any(not s or len(s) > MAX_STOP_STRING_CHARS for s in req.stop):
        raise InvalidRequest("stop", f"each stop string must have 1 to {MAX_STOP_STRING_CHARS} characters")
    if len(req.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidRequest("stop_token_ids", f"{len(req.stop_token_ids)} entries; allowed at most {MAX_STOP_TOKEN_IDS}")
    if len(req.sampling.logit_bias) > MAX_LOGIT_BIAS:
        raise InvalidRequest("logit_bias", f"{len(req.sampling.logit_bias)} entries; allowed at most {MAX_LOGIT_BIAS}")
    bad = next((t for t in req.stop_token_ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise InvalidRequest("stop_token_ids", f"token id {bad} out of range: allowed [0, {vocab})")
    try:
        req.sampling.validate(vocab_size=vocab)
    except ValueError as exc:
        raise InvalidRequest(_field_of(str(exc)), str(exc)) from None


def _field_of(message: str) -> str:
    match = re.match(r"\s*([A-Za-z_][A-Za-z_0-9]*)", message)
    return match.group(1) if match else "sampling"


def validate_score(req: ScoreRequest, info: ModelInfo) -> None:
    """Raise InvalidRequest unless context and continuation are non-empty, in vocabulary and fit the context."""
    for field, ids in (("context", req.context_ids), ("continuation", req.continuation_ids)):
        if not ids:
            raise InvalidRequest(field, "must contain at least one token")
        bad = next((t for t in ids if not 0 <= t < info.vocab_size), None)
        if bad is not None:
            raise InvalidRequest(field, f"token id {bad} out of range: allowed [0, {info.vocab_size})")
    total = len(req.context_ids) + len(req.continuation_ids)
    if total > info.max_context:
        raise InvalidRequest("continuation", f"context + continuation is {total} tokens; allowed at most {info.max_context}")
