"""Inverse-CDF draw over kept weights in token-id order, two-level: 64-token chunks, then tokens."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _below(t: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """t clamped to total * (1 - 2**-52), a float64 strictly below total (total > 0)."""
    return torch.minimum(t, total * (1 - 2.0**-52))


def inverse_cdf(
    sums: torch.Tensor, u: torch.Tensor, chunk: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick one token per row with probability proportional to its weight.

    sums [n, J] float32 chunk masses in id order, u [n] float64 in [0, 1), chunk(c [n]) -> the
    float32 weights [n, 64] of chunk c. Cumulative sums run sequentially in float64, so zero
    chunks or zero weights anywhere leave every other prefix sum unchanged. The target stays
    strictly below each total, so the first running sum above it always ends on a positive
    weight. Returns (chunk [n], offset [n], the token's weight [n] float32, total mass [n] float64).
    """
    cum = sums.double().cumsum(-1)  # [n, J]
    total = cum[:, -1]
    t = _below(u * total, total)  # [n] float64
    c = torch.searchsorted(cum, t[:, None], right=True)  # [n, 1] first running sum > t
    before = F.pad(cum, (1, 0)).gather(1, c)[:, 0]  # running sum before chunk c
    w = chunk(c[:, 0])  # [n, 64]
    token_running = w.double().cumsum(-1)  # [n, 64]
    j = torch.searchsorted(token_running, _below(t - before, token_running[:, -1])[:, None], right=True)  # [n, 1]
    return c[:, 0], j[:, 0], w.gather(1, j)[:, 0], total


def chunk_total(sums: torch.Tensor) -> torch.Tensor:
    """float64 [n]: total of chunk sums [n, J], accumulated exactly as inverse_cdf does."""
    return sums.double().cumsum(-1)[:, -1]
