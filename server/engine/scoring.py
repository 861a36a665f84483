"""Scoring many (context, continuation) pairs with lm-evaluation-harness's rules for text, truncation
and empty continuations; every pair is one sequence of the engine's shared batch."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from .types import ParamError, ScoreRequest
from .validation import ValidScore, validate_score

if TYPE_CHECKING:
    from .engine import Engine

MAX_PAIRS = 1024
MAX_IN_FLIGHT = 32  # pairs of one call in the engine at once: leaves queue room for other callers

# (context, continuation): both text, or both token ids (a ScorePair message holds one or the other).
ScorePair = tuple[str, str] | tuple[Sequence[int], Sequence[int]]


@dataclasses.dataclass(frozen=True)
class PreparedPair:
    """A pair as token ids, ready to score."""

    context_ids: tuple[int, ...]
    continuation_ids: tuple[int, ...]
    truncated_tokens: int = 0  # context tokens dropped from the left to fit the model
    checked: ValidScore | None = None  # what the engine scores; None: an empty continuation (scores 0)


@dataclasses.dataclass(frozen=True)
class PairScore:
    pair: PreparedPair
    logprobs: tuple[float, ...]  # raw logprob of each continuation token
    greedy_ids: tuple[int, ...]  # argmax at each continuation position
    is_greedy: bool
    cached_tokens: int = 0  # context positions taken from the prefix cache


def prepare_pairs(engine: Engine, pairs: Sequence[ScorePair], truncate_context: bool) -> list[PreparedPair]:
    """Token ids for every pair, checked before any is scored; errors name `pairs[i].<side>`."""
    if not 1 <= len(pairs) <= MAX_PAIRS:
        raise ParamError("pairs", f"{len(pairs)} pairs; allowed 1 to {MAX_PAIRS}")
    return [_prepare_one(engine, i, pair, truncate_context) for i, pair in enumerate(pairs)]


def _prepare_one(engine: Engine, i: int, pair: ScorePair, truncate: bool) -> PreparedPair:
    if isinstance(pair[0], str):
        ctx, cont = engine.encode_pair(*pair)
        if not cont:  # e.g. an empty continuation, or one that merges into the context's last token
            return PreparedPair(tuple(ctx), ())
    else:
        ctx, cont = list(pair[0]), list(pair[1])
    limit = engine.info.max_context
    drop = len(ctx) + len(cont) - limit
    if truncate and drop > 0:
        if drop >= len(ctx):
            raise ParamError(
                f"pairs[{i}].continuation",
                f"{len(cont)} tokens; allowed at most {limit - 1} (model context {limit} minus one context token)",
            )
        ctx = ctx[drop:]
    try:
        checked = validate_score(ScoreRequest(tuple(ctx), tuple(cont)), engine.info)
    except ParamError as exc:
        hint = "; or set truncate_context" if exc.field == "continuation" and not truncate else ""
        raise ParamError(f"pairs[{i}].{exc.field}", f"{exc}{hint}") from None
    return PreparedPair(tuple(ctx), tuple(cont), max(drop, 0) if truncate else 0, checked)


async def score_pairs(
    engine: Engine, pairs: Sequence[PreparedPair], request_id: str = "", client: str = ""
) -> list[PairScore]:
    """Scores in order; pairs with an empty continuation score 0 without touching the model. The pairs
    come from prepare_pairs() or rolling_pairs(), checked there. At most
    MAX_IN_FLIGHT workers take pairs in turn, so a call with many pairs costs no more tasks than that."""
    results: list[PairScore | None] = [None] * len(pairs)
    todo = iter(range(len(pairs)))

    async def worker() -> None:
        for i in todo:
            pair = pairs[i]
            if pair.checked is None:
                results[i] = PairScore(pair, (), (), True)
                continue
            result = await engine.score(pair.checked.for_caller(request_id, client))
            results[i] = PairScore(pair, result.logprobs, result.greedy_ids, result.is_greedy, result.cached_tokens)

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(MAX_IN_FLIGHT, len(pairs)))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:  # one pair failed, or the caller left: free the others' slots
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return cast("list[PairScore]", results)  # every worker finished: each slot holds its pair's score
