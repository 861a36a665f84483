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


class NgramDrafter:
    """The n-grams of one sequence's tokens (prompt and output so far), indexed as they arrive, and how
    often its proposals came true.

    index[n-gram] is where the tokens after its latest complete occurrence start; an occurrence
    counts once a token follows it, so the sequence's own tail never matches itself. Every step's
    proposal is scored against the tokens the step produced, drafted or not (a free check), so
    `hit_rate` follows the sequence and drafts come back when its text starts repeating.
    """

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.index: dict[tuple[int, ...], int] = {}
        self.indexed = 0  # continuation positions registered so far: index covers ends < this
        self.proposal: list[int] = []  # the latest proposal, until observe() scores it
        self.hit_rate = HIT_RATE_PRIOR  # estimated P(next proposed token is right | the ones before were)

    def extend(self, tokens: Sequence[int]) -> None:
        self.tokens.extend(tokens)

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the longest matching tail."""
        toks = self.tokens
        length = len(toks)
        for end in range(max(self.indexed, NGRAM_MIN), length):  # n-grams ending before `end` are followed
            for n in range(NGRAM_MIN, min(NGRAM_MAX, end) + 1):
                self.index[tuple(toks[end - n : end])] = end
        self.indexed = length  # tokens only grow
        self.proposal = []
        if limit > 0:
            for n in range(min(NGRAM_MAX, length), NGRAM_MIN - 1, -1):
                start = self.index.get(tuple(toks[length - n :]))
                if start is not None:
                    self.proposal = toks[start : start + limit]
                    break
        return self.proposal

    def worth(self, bar: float) -> int:
        """How many of the proposal's tokens to compute: the i-th pays while hit_rate**i (the chance
        that it is kept) exceeds `bar`, the price of its row (scheduler.draft_threshold)."""
        count, kept = 0, self.hit_rate
        while count < len(self.proposal) and kept > bar:
            count += 1
            kept *= self.hit_rate
        return count

    def observe(self, produced: Sequence[int]) -> None:
        """Score the latest proposal against the tokens the step produced, up to its first miss."""
        for guess, token in zip(self.proposal, produced):
            hit = guess == token
            self.hit_rate += HIT_RATE_STEP * (hit - self.hit_rate)
            if not hit:
                break
        self.proposal = []
