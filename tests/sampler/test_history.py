"""TokenHistory: its bookkeeping, and penalties read from it give the reference's edits and draws from id lists."""

import random
from collections import Counter

import pytest
import torch
from sampler_reference import edited, reference_sample

from seedstream.sampler import SamplingParams, TokenHistory, sample
from seedstream.sampler.blocks import prepare
from seedstream.sampler.penalties import edits


def test_history_keeps_distinct_ids_ascending_with_their_output_counts():
    rng = random.Random(5)
    prompt = [rng.randrange(-3, 60) for _ in range(200)]
    h = TokenHistory(prompt)
    out: list[int] = []
    for _ in range(300):
        t = rng.randrange(-3, 80)
        h.add(t)
        out.append(t)
        if rng.random() < 0.05:  # a copy with extra output leaves the original alone
            before = (list(h.ids), list(h.counts))
            extra = [rng.randrange(0, 90) for _ in range(4)]
            other = h.with_output(extra)
            assert (list(h.ids), list(h.counts)) == before
            want = Counter(out + extra)
            assert list(other.ids) == sorted(set(prompt) | set(want))
            assert list(other.counts) == [want[t] for t in other.ids]
    counts = Counter(out)
    assert list(h.ids) == sorted(set(prompt) | set(out))
    assert list(h.counts) == [counts[t] for t in h.ids]
    assert h.ids.typecode == "q" and h.counts.typecode == "q"  # int64: the sampler copies them without a loop
    again = TokenHistory(prompt)
    again.extend(out)
    assert again == h and len(again) == len(h.ids)


PENALTY_MIXES = [
    dict(repetition_penalty=1.3),
    dict(repetition_penalty=0.7, top_k=40),
    dict(presence_penalty=0.5, frequency_penalty=0.7, top_p=0.9),
    dict(frequency_penalty=-0.4, min_p=0.1),
    dict(repetition_penalty=1.2, presence_penalty=-1.0, temperature=0.6, top_k=50, top_p=0.95),
    dict(repetition_penalty=1.1, logit_bias=((3, 2.5), (3, -0.5), (10, -100.0), (4000, 1e30))),
    dict(presence_penalty=2.0, logit_bias=((7, 1.0),), temperature=0),
    dict(logit_bias=((1, 1.0),)),  # no penalty: the history is not read
    dict(),
]


def _case(seed: int, batch: int, vocab: int):
    """Random rows: logits, parameters, prompt and output lists, suppressed ids, and the same as histories."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=gen) * 3
    logits[0, 3] = 3e38  # a penalty or bias may overflow this one to +inf before the clamp
    logits[:, 4] = -0.0  # a zero's sign: the edits may flip it, the draws may not depend on it
    params, prompts, outputs, suppressed, histories = [], [], [], [], []
    for _ in range(batch):
        mix = dict(rng.choice(PENALTY_MIXES))
        params.append(SamplingParams(seed=rng.randrange(1000), **mix))
        width = rng.choice([5, 50, vocab + 20])  # few distinct ids, many, some outside the vocabulary
        prompt = [rng.randrange(-2, width) for _ in range(rng.choice([0, 1, 30, 700]))]
        output = [rng.randrange(-2, width) for _ in range(rng.choice([0, 1, 9, 400]))]
        prompts.append(prompt)
        outputs.append(output)
        suppressed.append(rng.sample(range(vocab + 5), rng.choice([0, 0, 1, 6])))
        h = TokenHistory(prompt)
        h.extend(output)
        histories.append(None if not prompt and not output and rng.random() < 0.5 else h)
    return logits, params, prompts, outputs, suppressed, histories


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("batch", [1, 2, 7, 32])
def test_penalties_from_histories_give_the_edits_and_draws_of_the_id_lists(seed, batch):
    """Every edited logit equals the reference's, row by row from the id lists, and so does every draw."""
    vocab = [300, 5000, 49152][seed % 3]
    logits, params, prompts, outputs, suppressed, histories = _case(seed * 100 + batch, batch, vocab)
    sup = suppressed if seed % 2 else None
    x, _, _ = prepare(logits)
    got = edits(x, vocab, params, histories, sup)
    s = x.clone()
    if got is not None:
        s.view(-1)[got[0]] = got[1]
    for r in range(batch):
        want = edited(x[r], vocab, params[r], prompts[r], outputs[r], sup and sup[r])
        if want.max() > float("-inf"):  # else the reference drops the row's edits, as sample() does after edits()
            assert torch.equal(s[r], want), r
    steps = list(range(batch))
    got = sample(logits, params, steps, histories=histories, suppress_token_ids=sup, top_n=3)
    want = reference_sample(logits, params, steps, prompts, outputs, None, sup, 3)
    assert torch.equal(got.token_ids, want[0])
    assert torch.equal(got.processed_logprobs, want[2])
    assert torch.equal(got.top_token_ids, want[3])
    assert torch.allclose(got.logprobs, want[1], atol=1e-5) and torch.allclose(got.top_logprobs, want[4], atol=1e-5)


def test_histories_need_one_entry_per_row():
    x = torch.zeros(1, 10)
    with pytest.raises(ValueError, match="histories has 2 entries"):
        sample(x, [SamplingParams(repetition_penalty=1.2)], [0], histories=[TokenHistory(), TokenHistory()])
