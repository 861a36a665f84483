"""The sampled distribution is exactly what transformers' processors define.

Statistical tests use a chi-square goodness-of-fit at significance level alpha = 1e-3 with fixed
seeds, so each test is deterministic: it either always passes or always fails.
"""

import dataclasses
import zlib

import pytest
import torch
from sampler_reference import edited, hf_distribution, kept_set
from scipy import stats

from seedstream.sampler import SamplingParams, TokenHistory, sample

ALPHA = 1e-3
DRAWS = 20000
V = 300
PROMPT = [3, 5, 5, 7, 11, 200, 201]
OUTPUT = [5, 9, 9, 9, 12, 250, 3]
SUPPRESS = [0, 1, 2]


def _logits(seed: int, scale: float = 2.5) -> torch.Tensor:
    return torch.randn(V, generator=torch.Generator().manual_seed(seed)) * scale


def _draw(row: torch.Tensor, p: SamplingParams, n: int = DRAWS, hist: bool = False, sup=None):
    """n draws for one row: distinct seeds, steps and sample indices, one batched call."""
    params = [dataclasses.replace(p, seed=1000 + i) for i in range(n)]
    kw = dict(histories=[TokenHistory(PROMPT).with_output(OUTPUT)] * n) if hist else {}
    res = sample(
        row.expand(n, -1).contiguous(),
        params,
        [i % 7 for i in range(n)],
        sample_indices=[i % 3 for i in range(n)],
        suppress_token_ids=sup and [sup] * n,
        **kw,
    )
    return res


def _chi_square(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of a chi-square test; bins with expected count < 5 are merged into one."""
    n = tokens.numel()
    observed = torch.bincount(tokens, minlength=probs.numel()).double()
    expected = probs * n
    assert observed[expected == 0].sum() == 0, "a token outside the support was sampled"
    big = expected >= 5
    obs = torch.cat([observed[big], observed[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    if int(keep.sum()) < 2:
        return 1.0  # one bin: the support check above is the whole test
    exp = exp[keep] * obs.sum() / exp[keep].sum()
    return stats.chisquare(obs[keep].numpy(), exp.numpy()).pvalue


CASES = {
    "default": dict(),
    "temperature 0.5": dict(temperature=0.5),
    "temperature 1.7": dict(temperature=1.7),
    "top-k 10": dict(top_k=10),
    "top-p 0.8": dict(top_p=0.8),
    "top-k 40 top-p 0.9 T 0.8": dict(top_k=40, top_p=0.9, temperature=0.8),
    "min-p 0.1": dict(min_p=0.1),
    "top-p 0.95 min-p 0.05 T 1.2": dict(top_p=0.95, min_p=0.05, temperature=1.2),
    "top-k 20 min-p 0.2": dict(top_k=20, min_p=0.2),
    "logit bias": dict(logit_bias={17: 3.0, 42: -5.0, 99: 4.5}, temperature=0.9),
}


@pytest.mark.slow  # 8-14 s per case: many draws
@pytest.mark.parametrize("name", list(CASES))
def test_chi_square_matches_transformers(name):
    p = SamplingParams(**CASES[name])
    row = _logits(zlib.crc32(name.encode()) % 1000)
    res = _draw(row, p)
    probs = hf_distribution(row, p)
    assert _chi_square(res.token_ids, probs) > ALPHA
    # The processed log-probability is the log of that same distribution at the chosen token.
    assert torch.allclose(res.processed_logprobs.double(), probs[res.token_ids].log(), atol=1e-4)
    assert torch.allclose(res.logprobs, torch.log_softmax(row, -1)[res.token_ids], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kw",
    [
        dict(repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2),
        dict(repetition_penalty=0.7, top_p=0.9),
        dict(presence_penalty=-1.0, frequency_penalty=1.5, top_k=30),
    ],
)
def test_chi_square_penalties_and_suppression(kw):
    p = SamplingParams(**kw)
    row = _logits(5)
    res = _draw(row, p, hist=True, sup=SUPPRESS)
    probs = hf_distribution(row, p, PROMPT, OUTPUT, SUPPRESS)
    assert _chi_square(res.token_ids, probs) > ALPHA


@pytest.mark.slow
def test_all_equal_logits_are_uniform_and_top_k_keeps_ties():
    row = torch.zeros(V)
    for p in (SamplingParams(), SamplingParams(top_k=7), SamplingParams(top_p=0.5, temperature=0.3)):
        res = _draw(row, p, n=6000)
        probs = hf_distribution(row, p)
        if p.top_p == 1.0:  # transformers keeps every tie; top-p ties at the boundary go to low ids here
            assert _chi_square(res.token_ids, probs) > ALPHA
        else:
            kept, _ = kept_set(torch.cat([row, torch.full((320 - V,), float("-inf"))]), V, p)
            assert set(res.token_ids.tolist()) <= set(kept.nonzero()[:, 0].tolist())
            n_kept = int(kept.sum())  # mass 0.5 is reached at 150 tokens, up to float rounding
            assert n_kept in (150, 151) and kept[:n_kept].all()  # a prefix of the lowest ids


@pytest.mark.slow
def test_support_is_exact_on_many_rows():
    """Every draw lies in transformers' support; the kept sets agree token for token."""
    gen = torch.Generator().manual_seed(11)
    rows, params = [], []
    choices = [
        dict(top_k=5),
        dict(top_p=0.6),
        dict(min_p=0.3),
        dict(top_k=50, top_p=0.7, min_p=0.02),
        dict(top_p=0.3, temperature=0.4),
        dict(top_k=1),
        dict(top_p=1e-6),
    ]
    for i in range(400):
        rows.append(torch.randn(V, generator=gen) * (1 + i % 4))
        params.append(SamplingParams(seed=i, **choices[i % len(choices)]))
    logits = torch.stack(rows)
    for step in range(5):
        tokens = sample(logits, params, [step] * len(rows)).token_ids
        for r, (row, p) in enumerate(zip(rows, params)):
            support = hf_distribution(row, p) > 0
            assert support[tokens[r]], (r, p)
            if step == 0:
                kept, _ = kept_set(torch.cat([row, torch.full((320 - V,), float("-inf"))]), V, p)
                assert torch.equal(kept[:V], support), (r, p)


def test_greedy_lowest_id_wins_ties_after_edits():
    row = torch.tensor([1.0, 3.0, 2.0, 3.0, 3.0, 0.5])
    params = [
        SamplingParams(temperature=0),
        SamplingParams(temperature=0, logit_bias={4: 0.0}),
        SamplingParams(temperature=0, repetition_penalty=2.0),
        SamplingParams(temperature=0),
    ]
    res = sample(
        row.expand(4, -1),
        params,
        [0] * 4,
        histories=[None, None, TokenHistory([1]), None],
        suppress_token_ids=[[], [], [], [1]],
    )
    assert res.token_ids.tolist() == [1, 1, 3, 3]
    assert res.processed_logprobs.tolist() == [0.0] * 4
    assert torch.allclose(res.logprobs, torch.log_softmax(row, -1)[res.token_ids])


def test_edits_match_the_written_semantics():
    x = torch.cat([_logits(3), torch.full((320 - V,), float("-inf"))])
    p = SamplingParams(
        repetition_penalty=1.5, presence_penalty=0.5, frequency_penalty=0.25, logit_bias={7: 2.0, 5: -1.0}
    )
    s = edited(x, V, p, PROMPT, OUTPUT, SUPPRESS)
    want = x.clone()
    for t in set(PROMPT + OUTPUT):
        want[t] = want[t] * 1.5 if want[t] < 0 else want[t] / 1.5
    for t in set(OUTPUT):
        want[t] -= 0.25 * OUTPUT.count(t) + 0.5
    want[7] += 2.0
    want[5] -= 1.0
    want[SUPPRESS] = float("-inf")
    assert torch.allclose(s, want, atol=1e-6)


def test_top_alternatives():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 1000, generator=gen)
    logits[0, [3, 9, 500]] = 10.0  # a tie: ids ascending
    res = sample(logits, [SamplingParams(seed=1)] * 6, [0] * 6, top_n=20)
    ls = torch.log_softmax(logits, -1)
    for r in range(6):
        order = sorted(range(1000), key=lambda t: (-float(logits[r, t]), t))[:20]
        assert res.top_token_ids[r].tolist() == order
        assert torch.allclose(res.top_logprobs[r], ls[r, order], atol=1e-5)
    assert res.top_token_ids[0, :3].tolist() == [3, 9, 500]
