"""Scoring many (context, continuation) pairs with lm-evaluation-harness's rules for text, truncation
and empty continuations; every pair is one sequence of the engine's shared batch."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Sequence, Union

from .types import InvalidRequest, ScoreRequest
from .validation import validate_score

MAX_PAIRS = 1024
MAX_IN_FLIGHT = 32  # pairs of one call in the engine at once: leaves queue room for other callers

Side = Union[str, Sequence[int]]


@dataclasses.dataclass(frozen=True)
class PreparedPair:
    """A pair as token ids, ready to score."""

    context_ids: tuple[int, ...]
    continuation_ids: tuple[int, ...]
    truncated_tokens: int = 0  # context tokens dropped from the left to fit the model


@dataclasses.dataclass(frozen=True)
class PairScore:
    pair: PreparedPair
    logprobs: tuple[float, ...]  # raw logprob of each continuation token
    greedy_ids: tuple[int, ...]  # argmax at each continuation position
    is_greedy: bool
    cached_tokens: int = 0  # context positions taken from the prefix cache


def prepare_pairs(engine, pairs: Sequence[tuple[Side, Side]], truncate_context: bool) -> list[PreparedPair]:
    """Token ids for every pair, checked before any is scored; errors name `pairs[i].<side>`."""
    if not 1 <= len(pairs) <= MAX_PAIRS:
        raise InvalidRequest("pairs", f"{len(pairs)} pairs; allowed 1 to {MAX_PAIRS}")
    return [_prepare_one(engine, i, context, continuation, truncate_context)
            for i, (context, continuation) in enumerate(pairs)]


def _prepare_one(engine, i: int, context: Side, continuation: Side, truncate: bool) -> PreparedPair:
    if isinstance(context, str):
        ctx, cont = engine.encode_pair(context, continuation)
        if not cont:  # e.g. an empty continuation, or one that merges into the context's last token
            return PreparedPair(tuple(ctx), ())
    else:
        ctx, cont = list(context), list(continuation)
    limit = engine.info.max_context
    drop = len(ctx) + len(cont) - limit
    if truncate and drop > 0:
        if drop >= len(ctx):
            raise InvalidRequest(f"pairs[{i}].continuation",
                                 f"{len(cont)} tokens; allowed at most {limit - 1} (model context {limit} minus one context token)")
        ctx = ctx[drop:]
    pair = PreparedPair(tuple(ctx), tuple(cont), max(drop, 0) if truncate else 0)
    try:
        validate_score(ScoreRequest(pair.context_ids, pair.continuation_ids), engine.info)
    except InvalidRequest as exc:
        hint = "; or set truncate_context" if exc.field == "continuation" and not truncate else ""
        raise InvalidRequest(f"pairs[{i}].{exc.field}", f"{exc}{hint}") from None
    return pair


async def score_pairs(engine, pairs: Sequence[PreparedPair], request_id: str = "", client: str = "") -> list[PairScore]:
    """Scores in order; pairs with an empty continuation score 0 without touching the model. The pairs
    must be valid: from prepare_pairs(), or rolling windows of checked token ids. At most
    MAX_IN_FLIGHT workers take pairs in turn, so a call with many pairs costs no more tasks than that."""
    results: list = [None] * len(pairs)
    todo = iter(range(len(pairs)))

    async def worker() -> None:
        for i in todo:
            pair = pairs[i]
            if not pair.continuation_ids:
                results[i] = PairScore(pair, (), (), True)
                continue
            result = await engine.score_validated(
                ScoreRequest(pair.context_ids, pair.continuation_ids, request_id, client=client))
            results[i] = PairScore(pair, result.logprobs, result.greedy_ids, result.is_greedy, result.cached_tokens)

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(MAX_IN_FLIGHT, len(pairs)))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:  # one pair failed, or the caller left: free the others' slots
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return results
