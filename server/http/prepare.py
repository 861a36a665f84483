"""A parsed OpenAI request -> the engine's validated requests, one Choice per (prompt, sample): the model
named, the sizes within the service's limits, the seed resolved, the prompts tokenized."""

from __future__ import annotations

import asyncio
from typing import Any

from seedstream.sampler import SamplingParams
from seedstream.server.engine.types import GenerationRequest
from seedstream.server.service.errors import ParamError
from seedstream.server.service.inputs import check_chars, check_count, check_tokens, draw_seed, render_chat
from seedstream.server.service.state import ServiceState

from .errors import ModelNotFound
from .parse import ParsedRequest
from .responses import Choice, Echo

MODEL_ALIAS = "seedstream"  # accepted as `model` besides the served model's id


def check_model(engine: Any, model: str | None) -> None:
    if model is not None and model not in (engine.info.model_id, MODEL_ALIAS):
        raise ModelNotFound(f"model {model!r} is not served here: use {engine.info.model_id!r} (or {MODEL_ALIAS!r})")


def check_sizes(state: ServiceState, engine: Any, parsed: ParsedRequest) -> None:
    """gRPC's limits, before any tokenizing: samples within the queue, characters, token ids."""
    max_chars, max_tokens = state.input_caps(engine)
    queue = engine.config.max_queue
    prompts = 1 if parsed.chat else len(parsed.prompts)
    check_count("prompt", prompts, queue, "prompts")
    if prompts * parsed.n > queue:  # every sample waits in the queue at first: more could never run
        raise ParamError("n", f"{prompts} prompt(s) x n={parsed.n}; this server holds at most max_queue={queue}")
    if parsed.chat:
        field, chars = "messages", sum(len(m["role"]) + len(m["content"]) for m in parsed.messages)
    else:
        field, chars = "prompt", sum(len(p) for p in parsed.prompts if isinstance(p, str))
    check_chars(field, chars, max_chars)
    ids = sum(len(p) for p in parsed.prompts if not isinstance(p, str))
    check_tokens("prompt", ids, max_tokens)


async def prepare_choices(state: ServiceState, engine: Any, parsed: ParsedRequest, call: Any) -> list[Choice]:
    """One Choice per (prompt, sample), validated; sets call.seed (drawn unless given) and call.prompt_tokens."""
    call.seed = parsed.seed if parsed.seed is not None else draw_seed()
    check_sizes(state, engine, parsed)
    sampling = _sampling(engine, parsed, call.seed)
    sources: list[Any] = [parsed.messages] if parsed.chat else parsed.prompts
    choices: list[Choice] = []
    prompt_tokens = 0
    for i, source in enumerate(sources):
        ids = await _prompt_ids(engine, source, parsed.chat)
        prompt_tokens += len(ids)
        base = _request(parsed, ids, sampling, state.options.default_max_new_tokens, call.request_id)
        samples = engine.validate(base, parsed.n, echo_every_sample=True)  # every echoed choice
        echo = None
        if parsed.echo:
            echo = Echo(source if isinstance(source, str) else engine.decode(ids), ids)
        for j, valid in enumerate(samples):
            choices.append(
                Choice(i * parsed.n + j, valid, engine, chat=parsed.chat, logprobs=parsed.logprobs, echo=echo)
            )
    call.prompt_tokens = prompt_tokens
    return choices


def _sampling(engine: Any, parsed: ParsedRequest, seed: int) -> SamplingParams:
    if len(parsed.sampling.get("logit_bias", ())) > engine.info.vocab_size:
        raise ParamError("logit_bias", f"allowed at most vocab_size={engine.info.vocab_size} entries")
    try:
        return SamplingParams(seed=seed, **parsed.sampling)
    except (TypeError, ValueError) as exc:
        raise ParamError("logit_bias", str(exc)) from None


def _request(
    parsed: ParsedRequest, ids: list[int], sampling: SamplingParams, default_max_new_tokens: int, request_id: str
) -> GenerationRequest:
    """One prompt's engine request, before validation."""
    return GenerationRequest(
        prompt_token_ids=tuple(ids),
        sampling=sampling,
        max_new_tokens=parsed.max_new_tokens if parsed.max_new_tokens is not None else default_max_new_tokens,
        min_new_tokens=parsed.min_new_tokens,
        stop=parsed.stop,
        stop_token_ids=parsed.stop_token_ids,
        ignore_eos=parsed.ignore_eos,
        top_logprobs=parsed.top_logprobs,
        sample_index=parsed.sample_index,
        prompt_logprobs=parsed.echo and parsed.logprobs,
        request_id=request_id,
    )


async def _prompt_ids(engine: Any, source: Any, chat: bool) -> list[int]:
    """Token ids of one prompt; tokenizing always runs on a worker thread, never on the loop."""
    if chat:
        return await asyncio.to_thread(render_chat, engine, source)
    if isinstance(source, str):
        ids: list[int] = await asyncio.to_thread(engine.tokenize, source, True)
        return ids
    token_ids: list[int] = source
    return token_ids  # validation checks its length
