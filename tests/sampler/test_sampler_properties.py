"""Property-based fuzzing of parameters and logits (hypothesis)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sampler_reference import hf_distribution, reference_sample, sample_from_id_lists

from seedstream.sampler import SamplingParams, sample

pytestmark = pytest.mark.slow  # hypothesis runs each property on many batches: 20-30 s per test

NEG_INF = float("-inf")
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same cases on every run
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def logit_rows(draw, vocab: int):
    pool = draw(st.lists(st.floats(-30, 30, width=32), min_size=1, max_size=6))  # ties
    value = st.one_of(
        st.floats(-50, 50, width=32), st.sampled_from(pool), st.just(NEG_INF), st.sampled_from([1e30, -1e30, 3e38])
    )
    row = draw(st.lists(value, min_size=vocab, max_size=vocab))
    return torch.tensor(row, dtype=torch.float32)


@st.composite
def params(draw, vocab: int):
    temperature = draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(1e-4, 5.0)))
    return SamplingParams(
        temperature=temperature,
        top_k=draw(st.one_of(st.just(0), st.integers(1, vocab + 3))),
        top_p=draw(st.one_of(st.just(1.0), st.floats(1e-6, 1.0, exclude_min=True))),
        min_p=draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0))),
        repetition_penalty=draw(st.one_of(st.just(1.0), st.floats(0.5, 2.0))),
        presence_penalty=draw(st.one_of(st.just(0.0), st.floats(-2.0, 2.0))),
        frequency_penalty=draw(st.one_of(st.just(0.0), st.floats(-2.0, 2.0))),
        logit_bias=draw(st.dictionaries(st.integers(0, vocab - 1), st.floats(-100, 100), max_size=3)),
        seed=draw(st.integers(0, 2**64 - 1)),
    )


@st.composite
def batches(draw):
    vocab = draw(st.integers(1, 200))
    batch = draw(st.integers(1, 5))
    rows = torch.stack([draw(logit_rows(vocab)) for _ in range(batch)])
    ps = [draw(params(vocab)) for _ in range(batch)]
    ids = st.lists(st.integers(0, vocab - 1), max_size=12)
    extra = dict(
        prompt_token_ids=[draw(ids) for _ in range(batch)],
        output_token_ids=[draw(ids) for _ in range(batch)],
        sample_indices=[draw(st.integers(0, 7)) for _ in range(batch)],
        suppress_token_ids=[draw(st.lists(st.integers(0, vocab - 1), max_size=2)) for _ in range(batch)],
    )
    steps = [draw(st.integers(0, 10**6)) for _ in range(batch)]
    return rows, ps, steps, extra, draw(st.integers(0, 4))


@FUZZ
@given(batches())
def test_fast_path_equals_reference_and_outputs_are_valid(case):
    rows, ps, steps, extra, top_n = case
    got = sample_from_id_lists(rows, ps, steps, top_n=top_n, **extra)
    want = reference_sample(
        rows,
        ps,
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
    assert not got.logprobs.isnan().any() and not got.processed_logprobs.isnan().any()
    assert ((got.token_ids >= 0) & (got.token_ids < rows.shape[1])).all()


@FUZZ
@given(batches(), st.data())
def test_a_row_is_the_same_in_any_batch(case, data):
    rows, ps, steps, extra, top_n = case
    full = sample_from_id_lists(rows, ps, steps, top_n=top_n, **extra)
    r = data.draw(st.integers(0, rows.shape[0] - 1))
    alone = sample_from_id_lists(
        rows[r : r + 1], ps[r : r + 1], steps[r : r + 1], top_n=top_n, **{k: v[r : r + 1] for k, v in extra.items()}
    )
    for a, b in zip(
        (alone.token_ids, alone.logprobs, alone.processed_logprobs, alone.top_token_ids),
        (full.token_ids, full.logprobs, full.processed_logprobs, full.top_token_ids),
    ):
        assert torch.equal(a[0], b[r])


@FUZZ
@given(
    st.integers(2, 120).flatmap(
        lambda v: st.tuples(
            st.just(v), st.lists(st.floats(-20, 20, width=32), min_size=v, max_size=v, unique=True), params(v)
        )
    )
)
def test_draws_lie_in_the_transformers_support(case):
    """With distinct finite logits and no edits, every draw has positive transformers probability."""
    vocab, values, p = case
    row = torch.tensor(values)
    p = SamplingParams(temperature=max(p.temperature, 0.05), top_k=p.top_k, top_p=p.top_p, min_p=p.min_p, seed=p.seed)
    probs = hf_distribution(row, p)
    res = sample(row.expand(64, -1), [p] * 64, list(range(64)))
    assert (probs[res.token_ids] > 0).all()
