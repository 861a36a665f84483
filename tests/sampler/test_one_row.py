"""A lone row's draw (sampler/one_row.py) gives the general path's bits: every output, every kind of row."""

import random

import pytest
import torch
from sampler_reference import sample_from_id_lists
from test_sampler_invariance import KINDS, _ids, _suppressed, zipf_rows

import seedstream.sampler.one_row as one_row
import seedstream.sampler.truncate as truncate_mod
from seedstream.sampler import SamplingParams

ROW_KINDS = KINDS + [
    dict(temperature=0.8, top_k=50, top_p=0.9),
    dict(temperature=0.7, top_p=0.9),
    dict(temperature=1.0, top_p=0.95, min_p=0.05),
    dict(temperature=0.5, top_k=1),
    dict(temperature=2.0, top_k=768),
    dict(top_p=1e-6),
    dict(min_p=1.0),
    dict(temperature=1e-5, top_k=40),
    dict(top_k=40, top_p=0.9, min_p=0.1, repetition_penalty=1.3, logit_bias={3: 100.0, 9: -100.0}),
]


def shaped(x: torch.Tensor, style: int) -> torch.Tensor:
    """LM-like rows, and the shapes that stress a sampler: ties, -inf, flat, one towering token."""
    if style == 1:
        return (x * 2).round() / 2  # many ties, also at the k-th value
    if style == 2:
        return torch.where(x > x.median(), x, float("-inf"))
    if style == 3:
        return torch.zeros_like(x)
    if style == 4:
        x = x.clone()
        x[:, 17] += 40
    return x


def lone_and_batched(x, params, steps, extra, top_n):
    """Each row alone (B=1: one_row.draw) and all rows together (B>1: the general path)."""
    together = sample_from_id_lists(x, params, steps, top_n=top_n, **extra)
    for r in range(x.shape[0]):
        alone = sample_from_id_lists(
            x[r : r + 1],
            params[r : r + 1],
            steps[r : r + 1],
            top_n=top_n,
            **{k: v[r : r + 1] for k, v in extra.items()},
        )
        for name in ("token_ids", "logprobs", "processed_logprobs", "top_token_ids", "top_logprobs"):
            a, b = getattr(alone, name)[0], getattr(together, name)[r]
            assert a.dtype == b.dtype and torch.equal(
                a.view(torch.int32) if a.is_floating_point() else a, b.view(torch.int32) if b.is_floating_point() else b
            ), (name, params[r])


@pytest.mark.parametrize("vocab", [49152, 1000, 130])
@pytest.mark.parametrize("style", range(5))
def test_lone_row_equals_the_general_path(vocab, style):
    rng = random.Random(vocab * 10 + style)
    drawn = {"n": 0}
    real = one_row.draw

    def counting(*a, **kw):
        ok = real(*a, **kw)
        drawn["n"] += ok
        return ok

    one_row_draw, one_row.draw = one_row.draw, counting
    try:
        for rep in range(2):
            batch = len(ROW_KINDS)
            x = shaped(zipf_rows(batch, vocab, seed=rng.randrange(10**6)), style)
            params = [SamplingParams(seed=rng.randrange(2**64), **kind) for kind in ROW_KINDS]
            extra = dict(
                prompt_token_ids=_ids(rng, batch, vocab, 40),
                output_token_ids=_ids(rng, batch, vocab, 40),
                sample_indices=[rng.randrange(3) for _ in range(batch)],
                suppress_token_ids=_suppressed(rng, batch, vocab),
            )
            lone_and_batched(x, params, [rng.randrange(1000) for _ in range(batch)], extra, rep * 2)
    finally:
        one_row.draw = one_row_draw
    if style == 3 and vocab > one_row.MAX_MEMBERS:  # a flat row ties every token: too many for the lone draw
        assert drawn["n"] == 0
    else:
        assert drawn["n"] > 0  # the lone rows did take the one-row draw


def _top_p_rows(monkeypatch, token_bound_too_high: bool):
    """Lone top-p rows whose block-level guess falls short; (handed back to the general path, general draws)."""
    calls = {"handed_back": 0, "general": 0}
    real_one, real_general = one_row.draw, truncate_mod._draw

    def one(*a, **kw):
        ok = real_one(*a, **kw)
        calls["handed_back"] += not ok
        return ok

    def general(*a, **kw):
        calls["general"] += 1
        return real_general(*a, **kw)

    monkeypatch.setattr(one_row, "draw", one)
    monkeypatch.setattr(truncate_mod, "_draw", general)
    monkeypatch.setattr(
        truncate_mod, "top_p_threshold", lambda block_max, row_max, *a: row_max.double()
    )  # too high: falls short
    monkeypatch.setattr(
        one_row, "_top_p_guess", lambda processed, *a: processed.row_max.double()
    )  # the lone rows' guess too
    if token_bound_too_high:
        monkeypatch.setattr(
            one_row,
            "_token_threshold",
            lambda processed, config, weights, rows, total: processed.row_max[rows].double(),
        )
    x = zipf_rows(4, 4096, seed=8)
    params = [SamplingParams(seed=i, temperature=0.7, top_p=0.9) for i in range(4)]
    extra = dict(
        prompt_token_ids=[[]] * 4, output_token_ids=[[]] * 4, sample_indices=[0] * 4, suppress_token_ids=[[]] * 4
    )
    lone_and_batched(x, params, [5] * 4, extra, 0)
    return calls


def test_a_top_p_guess_that_falls_short_is_retried_from_the_token_level_bound(monkeypatch):
    calls = _top_p_rows(monkeypatch, token_bound_too_high=False)
    assert calls == {"handed_back": 0, "general": 2}  # the lone rows retried; the batch: its guess and one retry


def test_a_lone_row_whose_bounds_both_fall_short_goes_to_the_general_path(monkeypatch):
    calls = _top_p_rows(monkeypatch, token_bound_too_high=True)
    assert calls["handed_back"] == 4 and calls["general"] == 2 + 4 * 2  # the batch, then each lone row
