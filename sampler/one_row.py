"""One truncated CPU row (top-k, top-p or min-p): truncate.py's draw in a few tensor ops, the same bits.

A one-row step (one stream decoding) spent most of its sampling time in the general path's ~200 small
tensor ops, each costing more in dispatch than in arithmetic. Here the float32 arithmetic whose bits
depend on torch's kernels (exp of the candidates, the 64-token chunk sums) stays in torch on tensors
laid out exactly as the general path lays them out, and the rest runs on Python floats, which are
the same IEEE doubles: sequential float64 running sums (torch's CPU cumsum is sequential too),
comparisons, searches and the canonical sort. tests/sampler/test_one_row.py compares both paths.

The candidates are the tokens at or above a threshold, a prefix of the canonical order. Top-k and
min-p rows use the general path's proven threshold; a top-p row without top-k guesses one, verifies
that its candidates' mass reaches the bound, and else retries from the general path's token-level
bound (which candidates are read never changes the draw, only whether they hold the kept set).
Rows it leaves to the general path: top_k above the number of 64-token blocks (a histogram bound),
more than MAX_MEMBERS candidates (Python loops would cost more than the general path's tensor ops),
a top-p row whose retry falls short too, other devices (a CUDA cumsum is not sequential).
"""

from __future__ import annotations

import array
import bisect
import struct
from typing import TYPE_CHECKING

import torch

from .blocks import BLOCK, BLOCK_SHIFT, NEG_INF, ProcessedLogits
from .params import SamplingParams
from .rows import RowConfig, min_p_threshold
from .truncate import _token_threshold
from .weights import Weights

if TYPE_CHECKING:
    from .core import DrawnTokens  # core imports this module

BELOW = 1 - 2.0**-52  # chunks.py's _below factor
MAX_MEMBERS = 2048  # above this many candidates (flat or tied rows) the general path's tensor ops are faster


def draw(
    processed: ProcessedLogits,
    config: RowConfig,
    weights: Weights,
    p: SamplingParams,
    vocab: int,
    total: torch.Tensor | None,
    u: float,
    out: DrawnTokens,
) -> bool:
    """Draw the only row, a truncated one, into out exactly as truncate.sample_truncated would. False, with
    out untouched, for a row this path does not take (module docstring), or a top-p row whose candidates
    may miss part of its kept set: the general path then draws it (in the end from every token).

    vocab: the unpadded vocabulary size; total [1] float64: a full row's whole mass (None for other rows).
    """
    k = p.top_k if p.top_k < vocab else 0
    if processed.x.device.type != "cpu" or k > processed.block_max.shape[1]:
        return False
    if not bool(config.full[0]):  # top-k or min-p: a proven threshold, the candidates always hold the kept set
        return _draw_above(_theta(processed, config, p, k), processed, weights, p, k, total, u, out) is True
    assert total is not None, "full rows have a whole-row mass"
    drawn = _draw_above(_top_p_guess(processed, weights, p, total), processed, weights, p, k, total, u, out)
    if drawn is None:  # the guess fell short: the general path's retry, a bound from every token's weight
        theta = _token_threshold(processed, config, weights, torch.zeros(1, dtype=torch.int64), total)
        drawn = _draw_above(theta.double(), processed, weights, p, k, total, u, out)
    return drawn is True


def _top_p_guess(processed: ProcessedLogits, weights: Weights, p: SamplingParams, total: torch.Tensor) -> torch.Tensor:
    """[1] float64: 1.5 T below the largest block maximum such that the blocks at or above it (whole blocks)
    hold top_p * Z. Usually the tokens at or above it hold it too (about 95 % of LM rows at T <= 1); the
    draw verifies. Fewer ops than truncate.thresholds()'s guess, which serves many rows at once."""
    assert weights.sums is not None, "full rows have chunk sums"
    maxima, order = processed.block_max[0].sort(descending=True)  # [nb]
    cum = weights.sums[0][order].double().cumsum(0)  # [nb] mass of whole blocks, largest maxima first
    i = min(int(torch.searchsorted(cum, total * p.top_p)), cum.numel() - 1)
    return maxima[i : i + 1].double() - 1.5 * p.temperature


def _draw_above(
    theta_t: torch.Tensor,
    processed: ProcessedLogits,
    weights: Weights,
    p: SamplingParams,
    k: int,
    total: torch.Tensor | None,
    u: float,
    out: DrawnTokens,
) -> bool | None:
    """Draw from the candidates >= theta_t [1] float64 (a tensor, so comparisons promote to float64).
    True: drawn into out; None: a top-p row whose candidates may miss part of its kept set; False: too
    many candidates. out is written only when True."""
    rows = torch.zeros(1, dtype=torch.int64)
    blocks = (processed.block_max[0] >= theta_t).nonzero()[:, 0]  # [T] candidate blocks, ascending
    values = processed.blocks(torch.zeros_like(blocks), blocks)  # [T, 64]
    positions = (values >= theta_t).view(-1).nonzero()[:, 0]  # [M] member positions in the flat blocks
    if positions.numel() > MAX_MEMBERS:
        return False
    members = _canonical(positions.tolist(), values.view(-1)[positions].tolist(), blocks.tolist())
    tokens = _tensor("q", [t for _, _, t in members]).view(1, -1)  # [1, M] canonical order
    v = _tensor("f", [val for val, _, _ in members]).view(1, -1)
    if weights.index is not None:  # a full row: weights from its softmax, as the general path
        w = weights.tokens(rows, tokens, v)[0].tolist()
    else:  # Weights.tokens() of a row that is not full, without its per-row indexing
        w = torch.exp((v - processed.row_max) / weights.config.temperature)[0].tolist()
    kept = _top_k(members, k)
    if p.top_p < 1:
        z = total.item() if total is not None else _running(_chunk_sums(members, w, kept, blocks.numel()))[1]
        kept, covered = _top_p(w, kept, p.top_p * z)
        if not (covered or k or theta_t.item() == NEG_INF):
            return None
    if p.min_p > 0:
        bar = _f32(_f32(p.min_p) * w[0])  # float32 min_p * w(first), as the tensors compute it
        kept = [keep and weight >= bar for keep, weight in zip(kept, w, strict=True)]
    cum, z = _running(_chunk_sums(members, w, kept, blocks.numel()))
    t = min(u * z, z * BELOW)
    c = bisect.bisect_right(cum, t)  # first chunk whose running sum exceeds t
    chunk = [0.0] * BLOCK
    for (_, position, _), weight, keep in zip(members, w, kept, strict=True):
        if keep and position >> BLOCK_SHIFT == c:
            chunk[position & (BLOCK - 1)] = weight
    chunk_running, chunk_mass = _running(chunk)
    j = bisect.bisect_right(chunk_running, min(t - (cum[c - 1] if c else 0.0), chunk_mass * BELOW))
    out.put_one(int(blocks[c]) * BLOCK + j, chunk[j], z)
    return True


def _theta(processed: ProcessedLogits, config: RowConfig, p: SamplingParams, k: int) -> torch.Tensor:
    """truncate.thresholds() of a row that is not full, in fewer ops: [1] float64."""
    theta = (
        processed.block_max[0].topk(k).values[k - 1 : k].double()
        if k
        else torch.full((1,), NEG_INF, dtype=torch.float64)
    )
    if p.min_p > 0 and not (k and p.top_p < 1):
        theta = torch.maximum(theta, min_p_threshold(processed.row_max, config.temperature, config.min_p))
    return theta


def _canonical(positions: list[int], values: list[float], blocks: list[int]) -> list[tuple[float, int, int]]:
    """(value, flat position, token id) of each member, value descending then token id ascending."""
    members = [(v, q, (blocks[q >> BLOCK_SHIFT] << BLOCK_SHIFT) | (q & (BLOCK - 1))) for q, v in zip(positions, values)]
    members.sort(key=lambda m: (-m[0], m[2]))  # -0.0 == 0.0, as value_keys() orders them
    return members


def _top_k(members: list[tuple[float, int, int]], k: int) -> list[bool]:
    """Tokens at or above the k-th member's value (ties kept); every member when k is 0."""
    if k == 0:
        return [True] * len(members)
    kth = members[min(k, len(members)) - 1][0]
    return [v >= kth for v, _, _ in members]


def _top_p(w: list[float], kept: list[bool], bound: float) -> tuple[list[bool], bool]:
    """(the canonical prefix of kept tokens while the float64 mass strictly before one is < bound = top_p * Z,
    whether the candidates' kept mass reaches the bound: then no token beyond them can be kept)."""
    out: list[bool] = []
    before = 0.0
    for keep, weight in zip(kept, w, strict=True):
        out.append(keep and before < bound)
        before += weight if keep else 0.0
    return out, before >= bound


def _chunk_sums(members: list[tuple[float, int, int]], w: list[float], kept: list[bool], n_blocks: int) -> list[float]:
    """float32 sums of the kept weights per candidate block (torch's sum over [T, 64], as the general path)."""
    flat = torch.zeros(n_blocks * BLOCK, dtype=torch.float32)
    selected = [(q, weight) for (_, q, _), weight, keep in zip(members, w, kept, strict=True) if keep]
    if selected:
        flat[_tensor("q", [q for q, _ in selected])] = _tensor("f", [weight for _, weight in selected])
    return flat.view(n_blocks, BLOCK).sum(-1).tolist()


def _running(values: list[float]) -> tuple[list[float], float]:
    """Sequential float64 running sums and the total (torch's CPU cumsum adds in the same order)."""
    cum: list[float] = []
    acc = 0.0
    for x in values:
        acc += x
        cum.append(acc)
    return cum, acc


def _tensor(code: str, values: list[int] | list[float]) -> torch.Tensor:
    """A 1-D int64 ("q") or float32 ("f") tensor of a non-empty list (float32 values are exact: they came
    from float32 tensors); through an array, several times cheaper than torch.tensor(list)."""
    return torch.frombuffer(array.array(code, values), dtype=torch.int64 if code == "q" else torch.float32)


def _f32(x: float) -> float:
    """x rounded to float32 (round to nearest even, as a C cast)."""
    return float(struct.unpack("f", struct.pack("f", x))[0])
