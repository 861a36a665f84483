"""Slow references for the sampler tests: the documented semantics row by row, and transformers.

The reference takes each row's prompt and output as plain id lists; sample() takes the TokenHistory a
caller keeps of them (`sample_from_id_lists` builds those), so comparing the two also checks the histories.
"""

from __future__ import annotations

import math

import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from seedstream.sampler import SampleResult, SamplingParams, TokenHistory, sample
from seedstream.sampler.rng import python_uniform

BLOCK = 64
NEG_INF = float("-inf")


def _padded_raw(row: torch.Tensor) -> torch.Tensor:
    """float32 [Vp]: sanitised row padded with -inf to whole 64-token blocks."""
    x = row.float().clone()
    if not bool(torch.isfinite(x.max())) or bool(torch.isnan(x).any()):
        x = torch.nan_to_num(x, nan=NEG_INF, posinf=torch.finfo(torch.float32).max)
        if x.max() == NEG_INF:
            x = torch.zeros_like(x)
    pad = -len(x) % BLOCK
    return torch.cat([x, torch.full((pad,), NEG_INF)])


def edited(x: torch.Tensor, vocab: int, p: SamplingParams, prompt, output, suppress) -> torch.Tensor:
    """Processed logits of one row, edit by edit, with plain Python loops."""
    s = x.clone()
    hist = {t for t in list(prompt or []) + list(output or []) if 0 <= t < vocab}
    if p.repetition_penalty != 1.0:
        pen = torch.tensor(p.repetition_penalty, dtype=torch.float32)
        for t in hist:
            s[t] = s[t] * pen if s[t] < 0 else s[t] / pen
    counts: dict[int, int] = {}
    for t in output or []:
        if 0 <= t < vocab:
            counts[t] = counts.get(t, 0) + 1
    if p.presence_penalty != 0.0 or p.frequency_penalty != 0.0:
        fp = torch.tensor(p.frequency_penalty, dtype=torch.float32)
        pp = torch.tensor(p.presence_penalty, dtype=torch.float32)
        for t, c in counts.items():
            s[t] = s[t] - fp * torch.tensor(float(c)) - pp * torch.tensor(1.0)
    bias: dict[int, torch.Tensor] = {}  # a token's biases summed in float32 first (an id may repeat)
    for t, b in p.logit_bias:
        if 0 <= t < vocab:
            bias[t] = bias.get(t, torch.tensor(0.0)) + torch.tensor(b, dtype=torch.float32)
    for t, b in bias.items():
        s[t] = s[t] + b
    s = s.clamp(max=torch.finfo(torch.float32).max)
    for t in suppress or []:
        if 0 <= t < vocab:
            s[t] = NEG_INF
    return s if s.max() > NEG_INF else x.clone()


def _weights(s: torch.Tensor, x: torch.Tensor, p: SamplingParams, full: bool) -> torch.Tensor:
    m = s.max()
    t = torch.tensor(p.temperature, dtype=torch.float32)
    if full and p.temperature == 1 and 0 <= x.max() - m <= 16:
        probs = torch.softmax(x[None], -1)[0]
        lse = x.max() - probs[int(torch.argmax(x))].log()
        return torch.where(s != x, torch.exp(s - lse), probs)
    if full:
        z = s - m if not math.isfinite(float(m / t)) else s
        return torch.softmax((z / t)[None], -1)[0]
    return torch.exp((s - m) / t)


def kept_set(s: torch.Tensor, vocab: int, p: SamplingParams, x=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept bool [Vp], weights float32 [Vp]) of one processed row s (raw row x), with a full sort."""
    k = p.top_k if p.top_k < vocab else 0
    full = k == 0 and (p.top_p < 1 or p.min_p == 0)
    w = _weights(s, s if x is None else x, p, full)
    order = torch.sort(s, descending=True, stable=True).indices  # canonical order
    kept = torch.ones_like(s, dtype=torch.bool)
    if k:
        kept &= s >= s[order[k - 1]]
    if p.top_p < 1:
        wk = w * kept
        total = wk.view(1, -1, BLOCK).sum(-1).double().cumsum(-1)[0, -1]
        cum = wk[order].double().cumsum(0)
        before = torch.cat([torch.zeros(1, dtype=torch.float64), cum[:-1]])
        n_keep = int((before < p.top_p * total).sum())
        in_prefix = torch.zeros_like(kept)
        in_prefix[order[:n_keep]] = True
        kept &= in_prefix
    if p.min_p > 0:
        kept &= w >= torch.tensor(p.min_p, dtype=torch.float32) * w[order[0]]
    return kept, w


def _draw(wk: torch.Tensor, u: float) -> tuple[int, float]:
    """Two-level inverse CDF in token-id order; returns (token, total mass)."""
    sums = wk.view(1, -1, BLOCK).sum(-1)[0]
    cum = sums.double().cumsum(0)
    total = float(cum[-1])
    t = min(u * total, total * (1 - 2.0**-52))
    c = int((cum <= t).sum())
    rest = t - (float(cum[c - 1]) if c > 0 else 0.0)
    cw = wk[c * BLOCK : (c + 1) * BLOCK].double().cumsum(0)
    rest = min(rest, float(cw[-1]) * (1 - 2.0**-52))
    return c * BLOCK + int((cw <= rest).sum()), total


def reference_sample(
    logits,
    params,
    steps,
    prompt_token_ids=None,
    output_token_ids=None,
    sample_indices=None,
    suppress_token_ids=None,
    top_n=0,
):
    """(token_ids, logprobs, processed_logprobs, top_ids, top_lps) with a Python loop over rows."""
    batch, vocab = logits.shape
    out = ([], [], [], [], [])
    for r in range(batch):
        p = params[r]
        x = _padded_raw(logits[r])
        pick = lambda seqs: None if seqs is None else seqs[r]  # noqa: E731, B023 (called in this iteration)
        s = edited(x, vocab, p, pick(prompt_token_ids), pick(output_token_ids), pick(suppress_token_ids))
        lse = x.max() - torch.softmax(x[None], -1)[0][int(torch.argmax(x))].log()
        if p.temperature == 0:
            tok, plp = int(torch.argmax(s)), 0.0
        else:
            kept, w = kept_set(s, vocab, p, x)
            u = python_uniform(p.seed, 0 if sample_indices is None else sample_indices[r], int(steps[r]))
            tok, total = _draw(w * kept, u)
            plp = math.log(float(w[tok])) - math.log(total)
        order = torch.sort(x, descending=True, stable=True).indices[: min(top_n, vocab)]
        for lst, v in zip(out, (tok, float(x[tok] - lse), plp, order.tolist(), (x[order] - lse).tolist())):
            lst.append(v)
    return (
        torch.tensor(out[0]),
        torch.tensor(out[1]),
        torch.tensor(out[2], dtype=torch.float32),
        torch.tensor(out[3], dtype=torch.int64).reshape(batch, -1),
        torch.tensor(out[4], dtype=torch.float32).reshape(batch, -1),
    )


def hf_distribution(row: torch.Tensor, p: SamplingParams, prompt=(), output=(), suppress=()) -> torch.Tensor:
    """float64 [V]: the distribution transformers' processors define for one row."""
    vocab = row.shape[0]
    scores = row.float().clone()[None]
    for t in suppress:
        scores[0, t] = NEG_INF
    hist = [t for t in list(prompt) + list(output)]
    if p.repetition_penalty != 1.0 and hist:
        ids = torch.tensor([hist])
        scores = RepetitionPenaltyLogitsProcessor(float(p.repetition_penalty))(ids, scores)
    for t in set(output):
        c = list(output).count(t)
        scores[0, t] -= p.frequency_penalty * c + p.presence_penalty
    for t, b in p.logit_bias:
        scores[0, t] += b
    if p.temperature == 0:
        probs = torch.zeros(vocab, dtype=torch.float64)
        probs[int(torch.argmax(scores[0]))] = 1.0
        return probs
    ids = torch.zeros((1, 1), dtype=torch.long)
    scores = TemperatureLogitsWarper(float(p.temperature))(ids, scores)
    if p.top_k:
        scores = TopKLogitsWarper(p.top_k)(ids, scores)
    if p.top_p < 1:
        scores = TopPLogitsWarper(p.top_p)(ids, scores)
    if p.min_p > 0:
        scores = MinPLogitsWarper(p.min_p)(ids, scores)
    return torch.softmax(scores[0].double(), -1)


def histories_of(prompt_token_ids, output_token_ids) -> list[TokenHistory] | None:
    """The TokenHistory of each row's prompt and output id lists, as a caller keeps them; None for none."""
    if prompt_token_ids is None and output_token_ids is None:
        return None
    rows = len(prompt_token_ids if prompt_token_ids is not None else output_token_ids)
    prompts = prompt_token_ids if prompt_token_ids is not None else [()] * rows
    outputs = output_token_ids if output_token_ids is not None else [()] * rows
    return [TokenHistory(prompt).with_output(output) for prompt, output in zip(prompts, outputs, strict=True)]


def sample_from_id_lists(logits, params, steps, prompt_token_ids=None, output_token_ids=None, **kw) -> SampleResult:
    """sample() given the histories of these prompt and output id lists (the reference's form of them)."""
    return sample(logits, params, steps, histories=histories_of(prompt_token_ids, output_token_ids), **kw)
