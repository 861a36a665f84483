"""Rows with top-k, top-p or min-p: kept set on candidates above a proven threshold, then a draw."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .blocks import BLOCK, NEG_INF, ProcessedLogits
from .chunks import chunk_total, inverse_cdf
from .rows import RowConfig, block_threshold, kth_threshold, min_p_threshold, top_p_threshold
from .select import Candidates, extract
from .weights import Weights

if TYPE_CHECKING:
    from .core import DrawnTokens  # core imports this module


def thresholds(
    processed: ProcessedLogits,
    config: RowConfig,
    weights: Weights,
    rows: torch.Tensor,
    argmax: torch.Tensor,
    total: torch.Tensor | None,
) -> torch.Tensor:
    """float64 [n]: every kept token of rows [n] is >= theta (top-p rows without top-k: a guess).

    total [n] float64: full-vocabulary mass of full rows (None when there are none).
    """
    top_k, top_p, min_p, full = config.top_k[rows], config.top_p[rows], config.min_p[rows], config.full[rows]
    block_max, row_max, temperature = processed.block_max[rows], processed.row_max[rows], config.temperature[rows]
    theta = (
        kth_threshold(block_max, row_max, top_k)
        if bool((top_k > 0).any())
        else torch.full(row_max.shape, NEG_INF, dtype=torch.float64, device=row_max.device)
    )
    if bool((min_p > 0).any()):
        theta = torch.where(
            (top_k > 0) & (top_p < 1), theta, torch.maximum(theta, min_p_threshold(row_max, temperature, min_p))
        )
    if total is not None and bool(full.any()):
        assert weights.sums is not None, "full rows have chunk sums"
        full_rows = full.nonzero()[:, 0]  # [f] positions in rows
        batch_rows = rows[full_rows]
        # the weight of each full row's most likely token: s(argmax) = row_max
        w_max = weights.tokens(batch_rows, argmax[batch_rows][:, None], row_max[full_rows][:, None])[:, 0]
        theta[full_rows] = top_p_threshold(
            block_max[full_rows],
            row_max[full_rows],
            temperature[full_rows],
            w_max,
            weights.sums[batch_rows],
            top_p[full_rows],
            total[full_rows],
        )
    return theta


def sample_truncated(
    processed: ProcessedLogits,
    config: RowConfig,
    weights: Weights,
    rows: torch.Tensor,
    theta: torch.Tensor,
    total: torch.Tensor | None,
    u: torch.Tensor,
    out: DrawnTokens,
) -> None:
    """Draw rows [n] in groups of similar candidate counts, so that no row pads the others."""
    blocks = (processed.block_max[rows] >= theta[:, None]).sum(1)  # [n] candidate blocks per row
    big = blocks > max(64, 4 * int(blocks.median()))
    if bool(big.any()) and not bool(big.all()):
        for part in (~big, big):
            selected = part.nonzero()[:, 0]
            _draw(
                processed,
                config,
                weights,
                rows[selected],
                theta[selected],
                None if total is None else total[selected],
                u,
                out,
            )
    else:
        _draw(processed, config, weights, rows, theta, total, u, out)


def _draw(
    processed: ProcessedLogits,
    config: RowConfig,
    weights: Weights,
    rows: torch.Tensor,
    theta: torch.Tensor,
    total: torch.Tensor | None,
    u: torch.Tensor,
    out: DrawnTokens,
    token_bound: bool = False,
) -> None:
    """Draw rows [n]; rows whose kept set may leave the candidates retry from a token-level bound
    (token_bound: theta already is one), then with every token."""
    candidates = extract(lambda r, b: processed.blocks(rows[r], b), processed.block_max[rows], theta)
    w = weights.tokens(rows, candidates.token, candidates.value)  # [n, C]
    kept, ok = _kept(candidates, w, config, rows, total, theta)
    kept_weights = candidates.scatter(w * kept)  # [T, 64] kept weights in id order
    c, j, token_weight, mass = inverse_cdf(
        candidates.per_row(kept_weights.sum(-1)), u[rows], lambda cc: kept_weights[candidates.start + cc]
    )
    out.put(rows, candidates.block[candidates.start + c] * BLOCK + j, token_weight, mass)
    if not bool(ok.all()):
        bad = (~ok).nonzero()[:, 0]
        bad_total = None if total is None else total[bad]  # rows that fail are full rows: it is set
        if token_bound or bad_total is None:
            retry = torch.full((bad.numel(),), NEG_INF, dtype=torch.float64, device=rows.device)
        else:
            retry = _token_threshold(processed, config, weights, rows[bad], bad_total)
        _draw(processed, config, weights, rows[bad], retry, bad_total, u, out, token_bound=True)


def _token_threshold(
    processed: ProcessedLogits, config: RowConfig, weights: Weights, rows: torch.Tensor, total: torch.Tensor
) -> torch.Tensor:
    """float64 [n]: a top-p bound from every token's own weight, for rows whose block-level guess failed.

    A heavy tail (top-p keeping thousands of tokens) defeats the guess from block maxima; binning the
    tokens themselves gives a bound a bin wide instead of reading and sorting the whole vocabulary.
    If it too falls short, the next retry takes every token (theta = -inf).
    """
    s = processed.rows(rows)  # [n, Vp]
    tokens = torch.arange(s.shape[1], device=s.device).expand(rows.numel(), -1)
    w = weights.tokens(rows, tokens, s)  # [n, Vp]
    temperature = config.temperature[rows]
    target = config.top_p[rows] * total * (1 + 1e-6)
    return block_threshold(s, processed.row_max[rows], temperature / 8, w, target)


def _kept(
    candidates: Candidates,
    w: torch.Tensor,
    config: RowConfig,
    rows: torch.Tensor,
    total: torch.Tensor | None,
    theta: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept bool [n, C] in canonical order, ok bool [n]): top-k, top-p, then min-p."""
    top_k, top_p, min_p = config.top_k[rows], config.top_p[rows], config.min_p[rows]
    kth = candidates.value.gather(1, (torch.minimum(top_k, candidates.count) - 1).clamp(min=0)[:, None])
    kept = candidates.valid & ((candidates.value >= kth) | (top_k == 0)[:, None])  # ties at the k-th all kept
    ok = torch.ones_like(top_p, dtype=torch.bool)
    if bool((top_p < 1).any()):
        own = chunk_total(candidates.per_row(candidates.scatter(w * kept).sum(-1)))
        total = own if total is None else torch.where(config.full[rows], total, own)
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
