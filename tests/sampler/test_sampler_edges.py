"""Robust inputs: dtypes, -inf / NaN / huge values, ties, extreme parameters, large V and B."""

import array

import pytest
import torch

from seedstream.sampler import SamplingParams, TokenHistory, sample

NEG_INF = float("-inf")
MIXED = [
    SamplingParams(temperature=0),
    SamplingParams(seed=1),
    SamplingParams(seed=2, top_k=5),
    SamplingParams(seed=3, top_p=0.9),
    SamplingParams(seed=4, min_p=0.2),
    SamplingParams(seed=5, top_k=50, top_p=0.8, temperature=0.5),
    SamplingParams(seed=6, temperature=1e-5),
    SamplingParams(seed=7, top_p=1e-6),
    SamplingParams(seed=8, temperature=100.0),
    SamplingParams(seed=9, repetition_penalty=2.0),
]


def check(logits: torch.Tensor, params, **kw):
    """Sample; every output is finite where it must be, and no masked or out-of-range token."""
    res = sample(logits, params, list(range(logits.shape[0])), **kw)
    vocab = logits.shape[1]
    assert res.token_ids.dtype == torch.int64 and ((res.token_ids >= 0) & (res.token_ids < vocab)).all()
    assert res.logprobs.dtype == torch.float32 and res.processed_logprobs.dtype == torch.float32
    assert not res.logprobs.isnan().any() and not res.processed_logprobs.isnan().any()
    assert (res.processed_logprobs <= 0).all() and torch.isfinite(res.processed_logprobs).all()
    picked = logits.float().gather(1, res.token_ids[:, None])[:, 0]
    has_value = (logits.float() > NEG_INF).any(-1)  # rows with a finite or +inf logit
    assert (picked[has_value] > NEG_INF).all(), "a masked (-inf or NaN) token was returned"
    return res


def rows(batch: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_compute_in_float32(dtype):
    x = rows(len(MIXED), 3000).to(dtype)
    res = check(x, MIXED)
    ref = sample(x.float(), MIXED, list(range(len(MIXED))))
    if dtype != torch.float64:
        assert torch.equal(res.token_ids, ref.token_ids)


def test_rows_with_minus_inf_nan_and_plus_inf():
    x = rows(len(MIXED), 1000)
    x[0, :] = NEG_INF  # nothing finite: treated as uniform
    x[1, ::2] = NEG_INF
    x[2, :995] = NEG_INF  # five finite tokens
    x[3, 7] = float("nan")
    x[4, 11] = float("inf")
    x[5, :] = float("nan")
    res = check(x, MIXED)
    assert res.token_ids[4] == 11  # +inf behaves as the largest value
    assert res.token_ids[2] >= 995
    assert res.token_ids[1] % 2 == 1


def test_huge_values_and_extreme_temperatures():
    x = rows(len(MIXED), 2000)
    x[:, 5] = 3e38
    x[:, 6] = -3e38
    x[:, 9] = 3.3e38
    res = check(x, MIXED)
    assert res.token_ids[6] == 9  # temperature 1e-5 behaves as greedy
    assert res.token_ids[7] == 9  # top_p 1e-6 keeps the most likely token only
    big = torch.full((2, 100), 1e30)
    big[:, 3] = 1e30 * (1 + 1e-6)
    tiny = [SamplingParams(seed=1, temperature=1e-5), SamplingParams(seed=2, temperature=1e-5, min_p=0.5)]
    check(big, tiny)


def test_all_equal_and_single_token_vocab():
    check(torch.zeros(len(MIXED), 777), MIXED)
    res = check(torch.zeros(len(MIXED), 1), MIXED)
    assert (res.token_ids == 0).all() and torch.allclose(res.logprobs, torch.zeros(len(MIXED)))
    assert (sample(torch.zeros(3, 50), [SamplingParams(temperature=0)] * 3, [0] * 3).token_ids == 0).all()


def test_temperature_1e5_and_top_p_1e6_are_greedy():
    x = rows(64, 5000, seed=4)
    greedy = x.argmax(-1)
    for p in (dict(temperature=1e-5), dict(top_p=1e-6), dict(top_k=1), dict(min_p=1.0)):
        res = check(x, [SamplingParams(seed=i, **p) for i in range(64)])
        assert torch.equal(res.token_ids, greedy), p


def test_top_k_larger_than_vocab_means_off():
    x = rows(16, 300, seed=5)
    off = sample(x, [SamplingParams(seed=i) for i in range(16)], list(range(16)))
    for k in (300, 301, 10**9):
        res = check(x, [SamplingParams(seed=i, top_k=k) for i in range(16)])
        assert torch.equal(res.token_ids, off.token_ids)
        assert torch.equal(res.processed_logprobs, off.processed_logprobs)


def test_largest_vocabulary_and_batch():
    check(rows(4, 262144, seed=6), MIXED[:4], top_n=20)
    res = check(rows(256, 4096, seed=7), [MIXED[i % len(MIXED)] for i in range(256)], top_n=3)
    assert res.top_token_ids.shape == (256, 3)


def test_top_n_wider_than_vocab_and_suppression_of_everything():
    res = check(rows(3, 5), MIXED[:3], top_n=20)
    assert res.top_token_ids.shape == (3, 5)
    # Suppressing every finite token drops the edits instead of sampling a masked token.
    x = torch.full((2, 10), NEG_INF)
    x[:, 4] = 1.0
    res = check(x, [SamplingParams(seed=1), SamplingParams(temperature=0)], suppress_token_ids=[[4], [4]])
    assert res.token_ids.tolist() == [4, 4]


def test_ids_outside_the_vocabulary_in_histories_are_ignored():
    x = rows(1, 100).expand(2, -1)
    p = [SamplingParams(seed=1, repetition_penalty=1.5, presence_penalty=1.0)] * 2
    histories = [TokenHistory([5, 1000]).with_output([-1, 7]), TokenHistory([5]).with_output([7])]
    a = sample(x, p, [0, 0], histories=histories, suppress_token_ids=[[100], []])
    assert torch.equal(a.token_ids[0], a.token_ids[1])
    assert torch.equal(a.processed_logprobs[0], a.processed_logprobs[1])


def test_bad_arguments():
    x = rows(2, 10)
    with pytest.raises(ValueError, match="top_n"):
        sample(x, [SamplingParams()] * 2, [0, 0], top_n=21)
    with pytest.raises(ValueError, match="one params"):
        sample(x, [SamplingParams()], [0, 0])
    with pytest.raises(ValueError, match=r"\[B, V\]"):
        sample(x[0], [SamplingParams()], [0])


def test_suppressed_id_rows_as_lists_tuples_tensors_and_arrays_give_the_same_draws():
    """A caller may give the suppressed ids in any of these forms (an int64 array is read without a loop);
    every form gives the same bits."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5000, generator=gen) * 3
    params = [
        SamplingParams(seed=1, temperature=0.9, repetition_penalty=1.3),
        SamplingParams(seed=2, top_k=40, presence_penalty=0.5, frequency_penalty=0.7),
        SamplingParams(seed=3, top_p=0.9, repetition_penalty=0.8, frequency_penalty=-0.4),
    ]
    rows = [[int(t) for t in torch.randint(0, 5000, (n,), generator=gen)] for n in (300, 0, 41)]
    histories = [TokenHistory(rows[2][:17]).with_output(rows[0][:5]), None, TokenHistory(rows[0])]
    forms = [
        lambda r: r,
        tuple,
        lambda r: torch.tensor(r, dtype=torch.int64),
        lambda r: array.array("q", r),
        lambda r: array.array("i", r),
    ]
    results = []
    for form in forms:
        res = sample(
            logits,
            params,
            [4, 5, 6],
            histories=histories,
            suppress_token_ids=[form(r) for r in rows],
        )
        results.append((res.token_ids, res.logprobs, res.processed_logprobs))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_the_logits_are_never_written():
    """sample() reads its input only (the engine passes views of its logits), also when it sanitises a row."""
    x = torch.randn(4, 3000, generator=torch.Generator().manual_seed(1)) * 4
    x[1, 7] = float("nan")
    x[2, 9] = float("inf")
    x[3] = float("-inf")
    for rows in ([0], [1], [2], [3], [0, 1, 2, 3]):
        before = x.clone()
        view = x[rows[0] : rows[-1] + 1]
        sample(view, [MIXED[i % len(MIXED)] for i in rows], [3] * len(rows), top_n=2)
        assert torch.equal(x.nan_to_num(), before.nan_to_num()) and torch.equal(x.isnan(), before.isnan())
