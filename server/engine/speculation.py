"""Exact speculative decoding by prompt lookup: draft tokens from the sequence's own n-grams.

A decoding sequence whose last n tokens (n = NGRAM_MAX down to NGRAM_MIN) occurred before
proposes the tokens that followed that occurrence. The step computes one row per drafted
token after the usual decode row, and the runner samples every row at its own step and
keeps tokens up to the first one that differs from the draft (that one is kept too).

This never changes a token, a logprob or a top alternative: prefill rows equal decode rows
bit for bit and the sampler is keyed by (seed, sample index, step), so the row that follows
an accepted draft token is the row the one-token-per-step schedule would have sampled from.
A wrong draft only costs its rows: the positions after the last kept token are rewritten by
the next step before anything reads them. It pays while a step is bound by reading the
weights (few sequences), where a few more rows cost far less than a step each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

# NGRAM_MAX, NGRAM_MIN: the longest and shortest tails looked up; MAX_SPECULATING_SEQUENCES: more decoding
# sequences than this draft nothing (the scheduler's rule). In settings, whose --speculative-tokens help quotes them.
from seedstream.server.settings import MAX_SPECULATING_SEQUENCES as MAX_SPECULATING_SEQUENCES
from seedstream.server.settings import NGRAM_MAX, NGRAM_MIN

HIT_RATE_PRIOR = 0.5  # a new sequence's chance that a proposed token is right
HIT_RATE_STEP = 0.1  # weight of each scored token in the running estimate (about the last 10 count)


@dataclasses.dataclass(frozen=True)
class SpeculationStats:
    """What GetModelInfo and /metrics report of speculation."""

    tokens: int  # --speculative-tokens (0: off)
    drafted: int  # tokens drafted since start
    accepted: int  # of those, the ones kept


def drafted_kept(draft: Sequence[int], sampled: Sequence[int]) -> int:
    """How many of a draft's tokens stand: each one the row before it sampled, up to the first miss."""
    kept = 0
    while kept < min(len(draft), len(sampled)) and sampled[kept] == draft[kept]:
        kept += 1
    return kept


class NgramDrafter:
    """The n-grams of one sequence's tokens (prompt and output so far), indexed as they arrive, and how
    often its proposals came true.

    index[n-gram] is where the tokens after its latest complete occurrence start; an occurrence
    counts once a token follows it, so the sequence's own tail never matches itself. Proposing
    only reads (the scheduler plans with it); extend() and observe() are the changes, made when a
    step is applied. Every step's proposal is scored against the tokens the step produced, drafted
    or not (a free check), so `hit_rate` follows the sequence and drafts come back when its text
    starts repeating.
    """

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.index: dict[tuple[int, ...], int] = {}  # covers every n-gram ending before len(tokens)
        self.hit_rate = HIT_RATE_PRIOR  # estimated P(next proposed token is right | the ones before were)

    def extend(self, tokens: Sequence[int]) -> None:
        """Append tokens and index the n-grams they complete (each one now followed by a token)."""
        old = len(self.tokens)
        self.tokens.extend(tokens)
        toks = self.tokens
        for end in range(max(old, NGRAM_MIN), len(toks)):  # n-grams ending before `end` are followed
            for n in range(NGRAM_MIN, min(NGRAM_MAX, end) + 1):
                self.index[tuple(toks[end - n : end])] = end

    def propose(self, limit: int, pending: Sequence[int] = ()) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the longest matching tail of
        the tokens and then `pending` (tokens not extend()ed yet, looked through here but not indexed)."""
        if limit <= 0:
            return []
        toks = self.tokens + list(pending) if pending else self.tokens
        length = len(toks)
        for n in range(min(NGRAM_MAX, length), NGRAM_MIN - 1, -1):
            tail = toks[length - n :]
            start = self._latest_pending(toks, tail)
            if start is None:
                start = self.index.get(tuple(tail))
            if start is not None:
                return toks[start : start + limit]
        return []

    def _latest_pending(self, toks: list[int], tail: list[int]) -> int | None:
        """The latest end, among the n-grams that `toks` completes past self.tokens, of an occurrence of `tail`."""
        for end in range(len(toks) - 1, max(len(self.tokens), len(tail)) - 1, -1):
            if toks[end - len(tail) : end] == tail:
                return end
        return None

    def worth(self, proposed: int, bar: float) -> int:
        """How many of `proposed` tokens to compute: the i-th pays while hit_rate**i (the chance that it
        is kept) exceeds `bar`, the price of its row (scheduler.draft_threshold)."""
        count, kept = 0, self.hit_rate
        while count < proposed and kept > bar:
            count += 1
            kept *= self.hit_rate
        return count

    def observe(self, proposal: Sequence[int], produced: Sequence[int]) -> None:
        """Score a step's proposal against the tokens the step produced, up to its first miss."""
        for guess, token in zip(proposal, produced):
            hit = guess == token
            self.hit_rate += HIT_RATE_STEP * (hit - self.hit_rate)
            if not hit:
                break
