"""Scheduler test helpers: sequences with no model, KV cache or tokenizer behind them."""

from seedstream.sampler import SamplingParams
from seedstream.server.engine import GenerationRequest, ScoreRequest
from seedstream.server.engine.prefix_cache import BLOCK_TOKENS
from seedstream.server.engine.scheduler import StepBudget
from seedstream.server.engine.sequence import EngineSequence

BUDGET = StepBudget(max_batch_size=4, max_kv_tokens=1000, max_step_tokens=64, prefill_chunk=32, max_context=512)


class FakeLoop:
    """Stands in for the caller's event loop: keeps what a sequence posts."""

    def __init__(self):
        self.posted = []

    def call_soon_threadsafe(self, put, item):
        self.posted.append(item)


class FakePrefixCache:
    """An enabled prefix cache that holds the first `hit` positions of every prompt."""

    enabled = True

    def __init__(self, hit: int = 0):
        self.hit, self.copied, self.counts = hit, [], [0, 0]

    def lookup(self, token_ids, hashes, start, limit):
        return max(start, min(self.hit, limit // BLOCK_TOKENS * BLOCK_TOKENS))

    def copy_into(self, cache, hashes, start, end):
        self.copied.append((start, end))

    def count(self, hit, miss):
        self.counts[0] += hit
        self.counts[1] += miss


def gen(length, first=100, max_new_tokens=8, **fields):
    request = GenerationRequest(
        tuple(range(first, first + length)), SamplingParams(seed=0), max_new_tokens=max_new_tokens, **fields
    )
    return EngineSequence.generation(request, None, FakeLoop(), None, frozenset({0}), BUDGET.max_context)


def score(context, continuation, first=100):
    request = ScoreRequest(
        tuple(range(first, first + context)), tuple(range(first + context, first + context + continuation))
    )
    return EngineSequence.scoring(request, None, FakeLoop())


def runs(batch):
    return [(seq, start, length) for seq, start, length in batch.runs]
