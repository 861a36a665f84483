"""Rows with top-k, top-p or min-p: kept set on candidates above a proven threshold, then a draw."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .blocks import BLOCK, NEG_INF, Processed
from .chunks import chunk_total, inverse_cdf
from .rows import RowConfig, block_threshold, kth_threshold, min_p_threshold, top_p_threshold
from .select import Candidates, extract
from .weights import Weights

if TYPE_CHECKING:
    from .core import _Out  # core imports this module


def thresholds(
    proc: Processed, cfg: RowConfig, wts: Weights, rows: torch.Tensor, arg: torch.Tensor, total: torch.Tensor | None
) -> torch.Tensor:
    """float64 [n]: every kept token of rows [n] is >= theta (top-p rows without top-k: a guess).

    total [n] float64: full-vocabulary mass of full rows (None when there are none).
    """
    top_k, top_p, min_p, full = cfg.top_k[rows], cfg.top_p[rows], cfg.min_p[rows], cfg.full[rows]
    bm, m, temp = proc.bm[rows], proc.m[rows], cfg.temperature[rows]
    theta = (
        kth_threshold(bm, m, top_k)
        if bool((top_k > 0).any())
        else torch.full(m.shape, NEG_INF, dtype=torch.float64, device=m.device)
    )
    if bool((min_p > 0).any()):
        theta = torch.where((top_k > 0) & (top_p < 1), theta, torch.maximum(theta, min_p_threshold(m, temp, min_p)))
    if total is not None and bool(full.any()):
        assert wts.sums is not None, "full rows have chunk sums"
        f = full.nonzero()[:, 0]
        w_max = wts.tokens(rows[f], arg[rows[f]][:, None], m[f][:, None])[:, 0]  # s(argmax) = m
        theta[f] = top_p_threshold(bm[f], m[f], temp[f], w_max, wts.sums[rows[f]], top_p[f], total[f])
    return theta


def sample_truncated(
    proc: Processed,
    cfg: RowConfig,
    wts: Weights,
    rows: torch.Tensor,
    theta: torch.Tensor,
    total: torch.Tensor | None,
    u: torch.Tensor,
    out: _Out,
) -> None:
    """Draw rows [n] in groups of similar candidate counts, so that no row pads the others."""
    blocks = (proc.bm[rows] >= theta[:, None]).sum(1)  # [n] candidate blocks per row
    big = blocks > max(64, 4 * int(blocks.median()))
    if bool(big.any()) and not bool(big.all()):
        for part in (~big, big):
            sel = part.nonzero()[:, 0]
            _draw(proc, cfg, wts, rows[sel], theta[sel], None if total is None else total[sel], u, out)
    else:
        _draw(proc, cfg, wts, rows, theta, total, u, out)


def _draw(
    proc: Processed,
    cfg: RowConfig,
    wts: Weights,
    rows: torch.Tensor,
    theta: torch.Tensor,
    total: torch.Tensor | None,
    u: torch.Tensor,
    out: _Out,
    token_bound: bool = False,
) -> None:
    """Draw rows [n]; rows whose kept set may leave the candidates retry from a token-level bound
    (token_bound: theta already is one), then with every token."""
    cand = extract(lambda r, b: proc.blocks(rows[r], b), proc.bm[rows], theta)
    w = wts.tokens(rows, cand.token, cand.vals)  # [n, C]
    kept, ok = _kept(cand, w, cfg, rows, total, theta)
    wk = cand.scatter(w * kept)  # [T, 64] kept weights in id order
    c, j, w_tok, mass = inverse_cdf(cand.per_row(wk.sum(-1)), u[rows], lambda cc: wk[cand.start + cc])
    out.put(rows, cand.block[cand.start + c] * BLOCK + j, w_tok, mass)
    if not bool(ok.all()):
        bad = (~ok).nonzero()[:, 0]
        bad_total = None if total is None else total[bad]  # rows that fail are full rows: it is set
        if token_bound or bad_total is None:
            retry = torch.full((bad.numel(),), NEG_INF, dtype=torch.float64, device=rows.device)
        else:
            retry = _token_threshold(proc, cfg, wts, rows[bad], bad_total)
        _draw(proc, cfg, wts, rows[bad], retry, bad_total, u, out, token_bound=True)


def _token_threshold(
    proc: Processed, cfg: RowConfig, wts: Weights, rows: torch.Tensor, total: torch.Tensor
) -> torch.Tensor:
    """float64 [n]: a top-p bound from every token's own weight, for rows whose block-level guess failed.

    A heavy tail (top-p keeping thousands of tokens) defeats the guess from block maxima; binning the
    tokens themselves gives a bound a bin wide instead of reading and sorting the whole vocabulary.
    If it too falls short, the next retry takes every token (theta = -inf).
    """
    s = proc.rows(rows)  # [n, Vp]
    tok = torch.arange(s.shape[1], device=s.device).expand(rows.numel(), -1)
    w = wts.tokens(rows, tok, s)  # [n, Vp]
    temp = cfg.temperature[rows]
    target = cfg.top_p[rows] * total * (1 + 1e-6)
    return block_threshold(s, proc.m[rows], temp / 8, w, target)


def _kept(
    cand: Candidates,
    w: torch.Tensor,
    cfg: RowConfig,
    rows: torch.Tensor,
    total: torch.Tensor | None,
    theta: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept bool [n, C] in canonical order, ok bool [n]): top-k, top-p, then min-p."""
    top_k, top_p, min_p = cfg.top_k[rows], cfg.top_p[rows], cfg.min_p[rows]
    kth = cand.vals.gather(1, (torch.minimum(top_k, cand.count) - 1).clamp(min=0)[:, None])
    kept = cand.valid & ((cand.vals >= kth) | (top_k == 0)[:, None])  # ties at the k-th all kept
    ok = torch.ones_like(top_p, dtype=torch.bool)
    if bool((top_p < 1).any()):
        own = chunk_total(cand.per_row(cand.scatter(w * kept).sum(-1)))
        total = own if total is None else torch.where(cfg.full[rows], total, own)
        kept, ok = _top_p(w, kept, top_p, top_k, total, theta)
    if bool((min_p > 0).any()):
        kept = kept & (w >= (min_p * w[:, 0])[:, None])  # w[:, 0]: the most likely token
    return kept, ok


def _top_p(
    w: torch.Tensor,
    kept: torch.Tensor,
    top_p: torch.Tensor,
    top_k: torch.Tensor,
    total: torch.Tensor,
    theta: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the canonical prefix while the mass strictly before a token is < top_p * total."""
    cum = (w * kept).double().cumsum(1)  # [n, C]
    before = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1]], 1)
    bound = top_p * total
    n_keep = (before < bound[:, None]).sum(1, keepdim=True)  # >= 1
    off = top_p >= 1
    prefix = torch.arange(w.shape[1], device=w.device) < n_keep
    ok = off | (top_k > 0) | (theta == NEG_INF) | (cum[:, -1] >= bound)
    return kept & (prefix | off[:, None]), ok
