"""Batch invariance, determinism across processes, and every fast path against the slow reference."""

import hashlib
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from sampler_reference import reference_sample, sample_from_id_lists

import seedstream.sampler.core as core
import seedstream.sampler.one_row as one_row
import seedstream.sampler.truncate as truncate_mod
from seedstream.sampler import SamplingParams
from seedstream.sampler.rows import kth_threshold

KINDS = [
    dict(temperature=0),
    dict(temperature=0.7),
    dict(top_k=50),
    dict(top_p=0.9),
    dict(top_k=50, top_p=0.95),
    dict(min_p=0.05),
    dict(temperature=1.3, top_p=0.5, min_p=0.01),
    dict(repetition_penalty=1.2, presence_penalty=0.5, frequency_penalty=0.3),
    dict(top_k=5, logit_bias={7: 4.0}),
    dict(temperature=0.9, top_p=0.99, repetition_penalty=0.9),
]


def zipf_rows(batch: int, vocab: int, seed: int) -> torch.Tensor:
    """Heavy-tailed LM-like logits (as in bench/bench_sampler.py)."""
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.argsort(torch.rand(batch, vocab, generator=gen), dim=1).float() + 1.0
    slope = 1.3 + 0.5 * torch.rand(batch, 1, generator=gen)
    return -slope * torch.log(ranks) + 0.5 * torch.randn(batch, vocab, generator=gen)


def _ids(rng: random.Random, batch: int, vocab: int, most: int) -> list:
    return [[rng.randrange(vocab) for _ in range(rng.randrange(most))] for _ in range(batch)]


def _suppressed(rng: random.Random, batch: int, vocab: int) -> list:
    return [[rng.randrange(vocab)] if rng.random() < 0.3 else [] for _ in range(batch)]


def make_batch(batch: int, vocab: int, seed: int):
    rng = random.Random(seed)
    params = [SamplingParams(seed=rng.randrange(2**64), **KINDS[i % len(KINDS)]) for i in range(batch)]
    extra = dict(
        prompt_token_ids=_ids(rng, batch, vocab, 64),
        output_token_ids=_ids(rng, batch, vocab, 64),
        sample_indices=[rng.randrange(4) for _ in range(batch)],
        suppress_token_ids=_suppressed(rng, batch, vocab),
    )
    return zipf_rows(batch, vocab, seed), params, [rng.randrange(1000) for _ in range(batch)], extra


def run(logits, params, steps, extra, order, top_n=5):
    """sample() on the rows `order` of a batch; returns the result tensors as one tuple.

    Two float64 sums are caught inside the sampler as well: each row's kept mass and the
    full-row mass that top-p compares against. A rounding difference there flips a token only
    rarely, but shows at once in their bits.
    """
    pick = lambda seqs: [seqs[i] for i in order]  # noqa: E731
    mass, full_mass = (torch.full((len(order),), float("nan"), dtype=torch.float64) for _ in range(2))
    real_put, real_put_one, real_kept, real_one = (
        core.DrawnTokens.put,
        core.DrawnTokens.put_one,
        truncate_mod._kept,
        one_row.draw,
    )

    def put(self, rows, tokens, token_weight, total):
        mass[rows] = total
        real_put(self, rows, tokens, token_weight, total)

    def put_one(self, token, token_weight, total):  # a lone row's draw
        mass[0] = total
        real_put_one(self, token, token_weight, total)

    def kept(candidates, w, config, rows, total, theta):
        if total is not None:
            full_mass[rows] = torch.where(config.full[rows], total, float("nan"))
        return real_kept(candidates, w, config, rows, total, theta)

    def one(processed, config, weights, p, vocab, total, u, out):  # a lone row's draw (sampler/one_row.py)
        drawn = real_one(processed, config, weights, p, vocab, total, u, out)
        if drawn and total is not None:
            full_mass[0] = torch.where(config.full[0], total[0], float("nan"))
        return drawn

    core.DrawnTokens.put, core.DrawnTokens.put_one, truncate_mod._kept, one_row.draw = put, put_one, kept, one
    try:
        res = sample_from_id_lists(
            logits[order], pick(params), pick(steps), top_n=top_n, **{k: pick(v) for k, v in extra.items()}
        )
    finally:
        core.DrawnTokens.put, core.DrawnTokens.put_one, truncate_mod._kept, one_row.draw = (
            real_put,
            real_put_one,
            real_kept,
            real_one,
        )
    return (res.token_ids, res.logprobs, res.processed_logprobs, res.top_token_ids, res.top_logprobs, mass, full_mass)


def assert_rows_equal(got, want, rows_got, rows_want):
    for g, w in zip(got, want):
        a, b = g[rows_got], w[rows_want]
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.slow  # 30-80 s per vocabulary
@pytest.mark.parametrize("vocab,alone", [(49152, 128), (50257, 64), (151936, 40)])
def test_row_is_bit_identical_alone_and_anywhere_in_a_batch_of_128(vocab, alone):
    logits, params, steps, extra = make_batch(128, vocab, seed=vocab)
    full = run(logits, params, steps, extra, list(range(128)))
    for r in range(alone):  # B=1 against B=128, every parameter kind
        assert_rows_equal(run(logits, params, steps, extra, [r]), full, [0], [r])
    for r in range(len(KINDS)):
        for pos in (0, 64, 127):  # first, middle and last position among other rows
            order = [i for i in range(128) if i != r]
            order.insert(pos, r)
            assert_rows_equal(run(logits, params, steps, extra, order), full, [pos], [r])


def test_every_batch_size_and_order_agrees():
    logits, params, steps, extra = make_batch(64, 32000, seed=3)
    full = run(logits, params, steps, extra, list(range(64)))
    rng = random.Random(4)
    for size in (1, 2, 3, 5, 8, 17, 33, 63):
        order = rng.sample(range(64), size)
        part = run(logits, params, steps, extra, order)
        assert_rows_equal(part, full, list(range(size)), order)


def test_many_rows_in_one_call():
    """More than 2048 rows (another key packing in the candidate sort) give the same rows."""
    logits, params, steps, extra = make_batch(2100, 1000, seed=9)
    full = run(logits, params, steps, extra, list(range(2100)))
    for r in (0, 5, 2099):
        assert_rows_equal(run(logits, params, steps, extra, [r]), full, [0], [r])


SCRIPT = textwrap.dedent("""
    import hashlib, random, sys, torch
    sys.path.insert(0, {here!r})
    from test_sampler_invariance import make_batch, run
    torch.manual_seed(int(sys.argv[1]))
    torch.rand(int(sys.argv[1]) % 97 + 1)  # prior use of the global RNG
    torch.set_num_threads(int(sys.argv[2]))
    logits, params, steps, extra = make_batch(40, 20000, seed=17)
    out = run(logits, params, steps, extra, list(range(40)))
    print(hashlib.sha256(b"".join(t.numpy().tobytes() for t in out)).hexdigest())
""")


@pytest.mark.slow  # starts several interpreters
def test_same_results_across_processes_global_seeds_and_thread_counts():
    here = str(__import__("pathlib").Path(__file__).resolve().parent)
    script = SCRIPT.format(here=here)
    digests = {
        subprocess.run(
            [sys.executable, "-c", script, seed, threads], check=True, capture_output=True, text=True
        ).stdout.strip()
        for seed, threads in (("1", "2"), ("987", "1"))
    }
    logits, params, steps, extra = make_batch(40, 20000, seed=17)
    out = run(logits, params, steps, extra, list(range(40)))
    digests.add(hashlib.sha256(b"".join(t.numpy().tobytes() for t in out)).hexdigest())
    assert len(digests) == 1


def random_case(rng: random.Random):
    vocab = rng.choice([1, 7, 64, 100, 1000, 4096, 5000])
    batch = rng.choice([1, 3, 17])
    x = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(rng.randrange(10**6)))
    x = x * rng.choice([0.1, 1, 3, 10])
    style = rng.randrange(5)
    if style == 4:  # a confident model: one token far above the rest of its row
        x[torch.arange(batch), torch.tensor([rng.randrange(vocab) for _ in range(batch)])] += 40
    elif style == 1:
        x = torch.zeros(batch, vocab)
    elif style == 2:
        x = x.round()  # many ties
    elif style == 3:
        x[:, ::3] = float("-inf")
    kinds = KINDS + [
        dict(top_k=vocab),
        dict(top_k=vocab + 5),
        dict(top_p=1e-6),
        dict(min_p=1.0),
        dict(temperature=1e-5),
        dict(top_p=0.999999, temperature=2.0),
        dict(min_p=1e-4),
    ]
    params = [SamplingParams(seed=rng.randrange(2**64), **rng.choice(kinds)) for _ in range(batch)]
    extra = dict(
        prompt_token_ids=_ids(rng, batch, vocab, 20),
        output_token_ids=_ids(rng, batch, vocab, 20),
        sample_indices=[rng.randrange(3) for _ in range(batch)],
        suppress_token_ids=_suppressed(rng, batch, vocab),
    )
    return x, params, [rng.randrange(100) for _ in range(batch)], extra, rng.randrange(6)


def assert_matches_reference(x, params, steps, extra, top_n):
    got = sample_from_id_lists(x, params, steps, top_n=top_n, **extra)
    want = reference_sample(
        x,
        params,
        steps,
        extra["prompt_token_ids"],
        extra["output_token_ids"],
        extra["sample_indices"],
        extra["suppress_token_ids"],
        top_n,
    )
    assert torch.equal(got.token_ids, want[0])
    assert torch.equal(got.processed_logprobs, want[2])
    assert torch.equal(got.top_token_ids, want[3])
    assert torch.allclose(got.logprobs, want[1], atol=1e-5)
    assert torch.allclose(got.top_logprobs, want[4], atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_fast_path_matches_reference(seed):
    rng = random.Random(seed)
    for _ in range(12):
        assert_matches_reference(*random_case(rng))


def test_fallbacks_match_reference(monkeypatch):
    """Guesses that fail verification, and thresholds that admit every token, give the same bits."""
    rng = random.Random(99)
    cases = [random_case(rng) for _ in range(12)]
    for _x, params, *_ in cases[:6]:  # top-p rows without top-k: their threshold is a guess
        params[:] = [
            SamplingParams(seed=i, top_p=rng.choice([0.5, 0.9]), min_p=rng.choice([0, 0.01]))
            for i in range(len(params))
        ]
    calls = {"n": 0}
    real = truncate_mod._token_threshold

    def counting(*args, **kw):
        calls["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(truncate_mod, "_token_threshold", counting)
    monkeypatch.setattr(truncate_mod, "top_p_threshold", lambda block_max, row_max, *a: row_max.double())  # too high
    for case in cases:
        assert_matches_reference(*case)
    assert calls["n"] > 0  # retries happened (a lone row's draw hands a failed guess to the general path)
    everything = lambda block_max, *a: torch.full((block_max.shape[0],), float("-inf"), dtype=torch.float64)  # noqa: E731
    monkeypatch.setattr(truncate_mod, "kth_threshold", everything)
    monkeypatch.setattr(truncate_mod, "min_p_threshold", lambda row_max, *a: everything(row_max[:, None]))
    monkeypatch.setattr(truncate_mod, "top_p_threshold", everything)
    for case in cases:
        assert_matches_reference(*case)


def test_kth_threshold_is_the_kth_block_maximum_even_on_peaked_rows():
    """At least k tokens reach theta, and theta stays tight when one token towers over the row."""
    g = torch.Generator().manual_seed(5)
    block_max = torch.randn(4, 768, generator=g)
    block_max[0, 3] += 40.0  # peaked: a fixed-width histogram below the maximum would give -inf
    k = torch.tensor([50, 1, 768, 0])
    theta = kth_threshold(block_max, block_max.amax(-1), k)
    for row in range(3):
        assert float(theta[row]) == float(block_max[row].sort(descending=True).values[int(k[row]) - 1])
    assert theta[3] == float("-inf")
    many = kth_threshold(
        block_max[:1, :10], block_max[:1, :10].amax(-1), torch.tensor([100])
    )  # k above the block count
    assert int((block_max[0, :10] >= many[0]).sum()) == 10


def test_failed_top_p_guess_retries_with_a_token_level_bound(monkeypatch):
    """A guess that misses is retried from the tokens' own weights, not by reading every token."""
    thetas = []
    real = truncate_mod._draw

    def recording(processed, config, weights, rows, theta, *rest, **kw):
        thetas.append(theta.clone())
        return real(processed, config, weights, rows, theta, *rest, **kw)

    monkeypatch.setattr(truncate_mod, "_draw", recording)
    monkeypatch.setattr(
        truncate_mod, "top_p_threshold", lambda block_max, row_max, *a: row_max.double()
    )  # always too high
    x = zipf_rows(8, 4096, seed=3)
    params = [SamplingParams(seed=i, temperature=0.7, top_p=0.9) for i in range(8)]
    extra = dict(
        prompt_token_ids=[[]] * 8, output_token_ids=[[]] * 8, sample_indices=[0] * 8, suppress_token_ids=[[]] * 8
    )
    assert_matches_reference(x, params, [0] * 8, extra, 0)
    assert len(thetas) == 2  # the guess, then one retry that holds
    assert bool(torch.isfinite(thetas[1]).all())


def test_a_failed_token_level_bound_falls_back_on_every_token(monkeypatch):
    """If the token-level retry also falls short, the next retry reads every token (and ends)."""
    thetas = []
    real = truncate_mod._draw

    def recording(processed, config, weights, rows, theta, *rest, **kw):
        thetas.append(theta.clone())
        return real(processed, config, weights, rows, theta, *rest, **kw)

    monkeypatch.setattr(truncate_mod, "_draw", recording)
    monkeypatch.setattr(truncate_mod, "top_p_threshold", lambda block_max, row_max, *a: row_max.double())  # too high
    monkeypatch.setattr(
        truncate_mod,
        "_token_threshold",
        lambda processed, config, weights, rows, total: processed.row_max[rows].double(),
    )
    x = zipf_rows(4, 4096, seed=5)
    params = [SamplingParams(seed=i, temperature=0.7, top_p=0.9) for i in range(4)]
    extra = dict(
        prompt_token_ids=[[]] * 4, output_token_ids=[[]] * 4, sample_indices=[0] * 4, suppress_token_ids=[[]] * 4
    )
    assert_matches_reference(x, params, [0] * 4, extra, 0)
    assert len(thetas) == 3 and bool((thetas[2] == float("-inf")).all())
