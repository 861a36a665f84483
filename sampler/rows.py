"""Per-row parameter tensors, row classes, and the thresholds that bound each row's kept set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .blocks import NEG_INF
from .params import SamplingParams


@dataclass
class RowConfig:
    """Parameters of B rows as tensors, and row classes (decided from params only).

    full: sampled, no top-k, and top-p or no truncation at all; their weights cover the whole
    row (see weights.py). support: full rows that keep every token. trunc: every other sampled
    row (top-k, top-p or min-p); greedy rows are in neither list.
    """

    temperature: torch.Tensor  # float32 [B]
    top_k: torch.Tensor  # int64 [B], 0 = off (top_k >= V counts as off)
    top_p: torch.Tensor  # float64 [B], 1 = off
    min_p: torch.Tensor  # float32 [B], 0 = off
    full: torch.Tensor  # bool [B]
    support: list[int]  # full rows keeping every token
    trunc: list[int]  # rows with top-k, top-p or min-p

    @staticmethod
    def build(params: Sequence[SamplingParams], vocab: int, device: torch.device) -> RowConfig:
        """The rows' config; a lone row's is built once per SamplingParams object (a request passes the
        same one every step) and shared: nothing writes into a RowConfig's tensors."""
        if len(params) == 1:
            key = (vocab, str(device))
            cached = params[0].__dict__.get("_row_config")
            if cached is None or cached[0] != key:
                cached = (key, RowConfig._build(params, vocab, device))
                object.__setattr__(params[0], "_row_config", cached)  # a cache, not a field
            return cached[1]
        return RowConfig._build(params, vocab, device)

    @staticmethod
    def _build(params: Sequence[SamplingParams], vocab: int, device: torch.device) -> RowConfig:
        table, full = [], []
        lists: dict[str, list[int]] = {"support": [], "trunc": []}
        for i, p in enumerate(params):
            k = p.top_k if p.top_k < vocab else 0
            table.append((p.temperature, k, p.top_p, p.min_p))
            is_full = p.temperature != 0 and k == 0 and (p.top_p < 1 or p.min_p == 0)
            full.append(is_full)
            if is_full and p.top_p >= 1:
                lists["support"].append(i)
            elif p.temperature != 0:
                lists["trunc"].append(i)
        t = torch.tensor(table, dtype=torch.float64, device=device).reshape(-1, 4)
        return RowConfig(
            t[:, 0].float(),
            t[:, 1].long(),
            t[:, 2],
            t[:, 3].float(),
            torch.tensor(full, dtype=torch.bool, device=device),
            **lists,
        )


def block_threshold(
    block_max: torch.Tensor,
    row_max: torch.Tensor,
    step: torch.Tensor,
    mass: torch.Tensor,
    target: torch.Tensor,
    bins: int = 256,
) -> torch.Tensor:
    """float64 [n]: a theta such that the blocks with maximum >= theta carry mass >= target.

    Blocks are binned by (row_max - block max) / step (no sort); theta is the lower edge of the first
    bin where the cumulative mass (mass [n, nb] per block) reaches target [n], widened for the
    float32 rounding of the binning; -inf when only the last, open-ended bin reaches it.
    """
    bin_of_block = (
        ((row_max[:, None] - block_max) / step.float()[:, None]).floor_().clamp_(0, bins - 1).long()
    )  # [n, nb]
    histogram = torch.zeros((block_max.shape[0], bins), dtype=torch.float64, device=block_max.device)
    first = (histogram.scatter_add_(1, bin_of_block, mass.double()).cumsum(1) < target[:, None]).sum(1)  # [n]
    edge = row_max.double() - (first + 1) * step.double() * (1 + 1e-6)
    return torch.where(first < bins - 1, edge, NEG_INF)


def kth_threshold(block_max: torch.Tensor, row_max: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """float64 [n]: theta with at least k tokens >= theta (k blocks reach it); -inf where k is 0.

    For k <= nb it is the k-th largest block maximum: k blocks each hold a token at or above it,
    and it stays tight when the row's maximum stands far above the rest (a confident model),
    where a histogram of fixed-width bins would give -inf and make every token a candidate.
    """
    nb = block_max.shape[1]
    k_blocks = k.clamp(1, nb)
    top = block_max.topk(int(k_blocks.max()), dim=-1, sorted=True).values  # [n, kmax] descending
    theta = top.gather(1, (k_blocks - 1)[:, None])[:, 0].double()
    if bool((k > nb).any()):  # more tokens than blocks: fall back on the histogram bound
        step = torch.full_like(row_max, 1.0 / 16)
        theta = torch.where(
            k > nb, block_threshold(block_max, row_max, step, torch.ones_like(block_max), k.double()), theta
        )
    return torch.where(k > 0, theta, NEG_INF)


def min_p_threshold(row_max: torch.Tensor, temperature: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """float64 [n]: a value below which exp((s - row_max) / T) < min_p surely holds (-inf when off).

    The margin covers float32 rounding of (s - row_max) / T and of exp, and float64 rounding of row_max.
    """
    max64, temperature64, min_p64 = row_max.double(), temperature.double(), min_p.double()
    log_p = torch.log(min_p64.clamp(min=1e-300))
    slack = temperature64 * 1e-4 * (1.0 + log_p.abs()) + max64.abs() * 2.0**-45
    return torch.where(min_p64 > 0, max64 + temperature64 * log_p - slack, NEG_INF)


def top_p_threshold(
    block_max: torch.Tensor,
    row_max: torch.Tensor,
    temperature: torch.Tensor,
    w_max: torch.Tensor,
    sums: torch.Tensor,
    top_p: torch.Tensor,
    total: torch.Tensor,
) -> torch.Tensor:
    """float64 [n]: a guess of the top-p boundary value from block statistics (verified later).

    Each block holds a token of weight about exp((block max - row_max) / T) * w_max: their mass above
    a value (about) bounds the mass above it from below, a sure guess when it reaches the target.
    Heavy tails need more than one token per block: then guess 1.5 T below the value where the
    whole blocks' mass (sums [n, nb], an upper bound) reaches it.
    """
    target = top_p * total
    estimate = torch.exp((block_max - row_max[:, None]) / temperature[:, None]) * w_max[:, None]  # [n, nb]
    low = block_threshold(block_max, row_max, temperature / 8, estimate, target * (1 + 1e-3))
    high = block_threshold(block_max, row_max, temperature / 8, sums, target)
    return torch.maximum(low, high - 1.5 * temperature.double())
