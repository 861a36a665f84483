"""A large logit_bias (up to the server's cap of 1024 entries) is exact: the same tokens and processed
logprobs as the per-row reference, alone or beside other rows, and repeated steps reuse its arrays."""

import random

import torch
from test_sampler_invariance import assert_matches_reference

from seedstream.sampler import SamplingParams, sample

VOCAB = 5000


def _bias(rng: random.Random, entries: int) -> dict[int, float]:
    return {t: rng.choice([-100.0, -3.5, 0.25, 2.0, 7.0, 100.0]) for t in rng.sample(range(VOCAB), entries)}


def test_large_logit_bias_matches_reference():
    rng = random.Random(7)
    batch = 5
    x = torch.randn(batch, VOCAB, generator=torch.Generator().manual_seed(3)) * 3
    params = [
        SamplingParams(seed=11, logit_bias=_bias(rng, 1024)),
        SamplingParams(seed=12, temperature=0.7, top_p=0.9, logit_bias=_bias(rng, 300), repetition_penalty=1.3),
        SamplingParams(seed=13, top_k=40),  # no bias, beside biased rows
        SamplingParams(seed=14, temperature=0.0, logit_bias=_bias(rng, 1024), presence_penalty=0.5),
        SamplingParams(seed=15, min_p=0.05, logit_bias=_bias(rng, 1), frequency_penalty=-1.0),
    ]
    extra = dict(
        prompt_token_ids=[rng.sample(range(VOCAB), 30) for _ in range(batch)],
        output_token_ids=[[rng.randrange(VOCAB) for _ in range(20)] for _ in range(batch)],
        sample_indices=[0, 1, 2, 0, 1],
        suppress_token_ids=[[], [0, 1], [], [5], []],
    )
    for step in range(3):  # the same SamplingParams objects each step, as the engine passes them
        assert_matches_reference(x, params, [step] * batch, extra, 3)


def test_biased_row_is_batch_invariant():
    rng = random.Random(8)
    x = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(4)) * 2
    params = [SamplingParams(seed=20 + i, temperature=0.9, logit_bias=_bias(rng, 1024)) for i in range(4)]
    together = sample(x, params, [5] * 4)
    for r in range(4):
        alone = sample(x[r : r + 1], params[r : r + 1], [5])
        assert together.token_ids[r] == alone.token_ids[0]
        assert torch.equal(together.processed_logprobs[r : r + 1], alone.processed_logprobs)
