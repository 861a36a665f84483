"""Rolling log-likelihood of a long token sequence (lm-evaluation-harness's loglikelihood_rolling).

The windows follow the harness's definition with a context length of one
token: every token is predicted exactly once; the first window predicts the
first `max_length` tokens after the prefix token; each later window predicts
the next (at most) `max_length` tokens, conditioned on as many preceding
tokens as make the window `max_length` tokens of model input. Each window is
one scoring pair (context, continuation) whose two parts together hold
`max_length + 1` tokens at most (the last continuation token is a target, not
an input).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .scoring import PreparedPair, score_pairs
from .types import ParamError, ScoreRequest
from .validation import ValidScore

if TYPE_CHECKING:
    from .engine import Engine


def rolling_windows(
    token_ids: Sequence[int], prefix_token_id: int, max_length: int
) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) pairs covering `token_ids`; every token is in exactly one continuation."""
    if max_length < 1:
        raise ValueError(f"max_length={max_length}: must be >= 1")
    tokens = list(token_ids)
    if not tokens:
        return []
    first = min(max_length, len(tokens))
    windows = [([prefix_token_id], tokens[:first])]
    done = first
    while done < len(tokens):
        end = min(len(tokens), done + max_length)
        # Model input is tokens[end - max_length - 1 : end - 1]; the targets are tokens[done:end].
        windows.append((tokens[end - max_length - 1 : done], tokens[done:end]))
        done = end
    return windows


@dataclasses.dataclass(frozen=True)
class RollingResult:
    logprobs: tuple[float, ...]  # one per token of the text, in order
    greedy_ids: tuple[int, ...]  # the argmax at each position
    num_windows: int
    cached_tokens: int = 0  # positions over all windows taken from the prefix cache

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))


def rolling_pairs(engine: Engine, token_ids: Sequence[int], max_length: int) -> list[PreparedPair]:
    """The checked windows of `token_ids` as scoring pairs (plain CPU work: may run on a worker thread)."""
    limit = engine.info.max_context - 1
    if not 1 <= max_length <= limit:
        raise ParamError(
            "max_length", f"{max_length} out of range: allowed [1, {limit}] (model context {limit + 1} minus one)"
        )
    vocab = engine.info.vocab_size
    bad = next((t for t in token_ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise ParamError("token_ids", f"token id {bad} out of range: allowed [0, {vocab})")
    # Valid by construction: a non-empty context (the prefix token or earlier tokens), a non-empty
    # continuation, ids checked above, and at most max_length + 1 <= max_context tokens in all.
    windows = rolling_windows(token_ids, engine.prefix_token_id, max_length)
    return [PreparedPair(tuple(c), tuple(x), checked=ValidScore(ScoreRequest(tuple(c), tuple(x)))) for c, x in windows]


async def score_rolling(
    engine: Engine, windows: Sequence[PreparedPair], request_id: str = "", client: str = ""
) -> RollingResult:
    """Score every window from rolling_pairs() through the engine's shared batch."""
    scores = await score_pairs(engine, windows, request_id, client)
    return RollingResult(
        logprobs=tuple(lp for s in scores for lp in s.logprobs),
        greedy_ids=tuple(g for s in scores for g in s.greedy_ids),
        num_windows=len(windows),
        cached_tokens=sum(s.cached_tokens for s in scores),
    )
