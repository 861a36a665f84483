"""Scheduler test helpers: sequences with no model, KV cache or tokenizer behind them."""

from seedstream.sampler import SamplingParams
from seedstream.server.engine import GenerationRequest, ScoreRequest
from seedstream.server.engine.prefix_cache import BLOCK_TOKENS
from seedstream.server.engine.scheduler import StepBudget
from seedstream.server.engine.sequence import EngineSequence
from seedstream.server.engine.step import SampledTokens, ScoredToken, StepResult

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
        self.hit = hit

    def lookup(self, token_ids, hashes, start, limit):
        return max(start, min(self.hit, limit // BLOCK_TOKENS * BLOCK_TOKENS))


class FakeCodec:
    """Stands in for the tokenizer: token t is the text "<t>"."""

    def decode(self, token_ids):
        return "".join(f"<{t}>" for t in token_ids)

    def token_text(self, token_id):
        return f"<{token_id}>"


def gen(length, first=100, max_new_tokens=8, **fields):
    request = GenerationRequest(
        tuple(range(first, first + length)), SamplingParams(seed=0), max_new_tokens=max_new_tokens, **fields
    )
    return EngineSequence.generation(request, None, FakeLoop(), FakeCodec(), frozenset({0}), BUDGET.max_context)


def score(context, continuation, first=100):
    request = ScoreRequest(
        tuple(range(first, first + context)), tuple(range(first + context, first + context + continuation))
    )
    return EngineSequence.scoring(request, None, FakeLoop())


def runs(batch):
    return [(seq, start, length) for seq, start, length in batch.runs]


def sampled(plan):
    return [s.seq for s in plan.samples]


def fake_result(plan, tokens=None, checks=()):
    """A StepResult with no model: each Sample's rows give tokens[seq] (a list, one per row; default 7s),
    every score row logprob -1.0 and greedy token 5."""
    tokens = tokens or {}
    samples = []
    for seq, _, draft in plan.samples:
        ids = tuple(tokens.get(seq, [7] * (len(draft) + 1)))
        samples.append(SampledTokens(ids, (-0.5,) * len(ids), ((),) * len(ids), ((),) * len(ids)))
    scores = tuple(ScoredToken(-1.0, 5, None) for _ in plan.scores)
    return StepResult(tuple(samples), scores, tuple(checks))
