"""One truncated CPU row (top-k, top-p or min-p): truncate.py's draw in a few tensor ops, the same bits.

A one-row step (one stream decoding) spent most of its sampling time in the general path's ~200 small
tensor ops, each costing more in dispatch than in arithmetic. Here the float32 arithmetic whose bits
depend on torch's kernels (exp of the candidates, the 64-token chunk sums) stays in torch on tensors
laid out exactly as the general path lays them out, and the rest runs on Python floats, which are
the same IEEE doubles: sequential float64 running sums (torch's CPU cumsum is sequential too),
comparisons, searches and the canonical sort. tests/sampler/test_one_row.py compares both paths.

The candidates are the tokens at or above the general path's threshold, a prefix of the canonical
order; a top-p row whose candidates' mass falls short of the bound goes back to the general path,
which widens them. Rows it does not take: top_k above the number of 64-token blocks (a histogram
bound), more than MAX_MEMBERS candidates (Python loops would cost more than the general path's
tensor ops), other devices (a CUDA cumsum is not sequential).
"""

from __future__ import annotations

import bisect
import struct
from typing import TYPE_CHECKING

import torch

from .blocks import BLOCK, BLOCK_SHIFT, NEG_INF, Processed
from .params import SamplingParams
from .rows import RowConfig, min_p_threshold
from .truncate import thresholds
from .weights import Weights

if TYPE_CHECKING:
    from .core import _Out  # core imports this module

BELOW = 1 - 2.0**-52  # chunks.py's _below factor
MAX_MEMBERS = 2048  # above this many candidates (flat or tied rows) the general path's tensor ops are faster


def draw(
    proc: Processed,
    cfg: RowConfig,
    wts: Weights,
    p: SamplingParams,
    vocab: int,
    arg: torch.Tensor,
    total: torch.Tensor | None,
    u: float,
    out: _Out,
) -> bool:
    """Draw the only row, a truncated one, into out exactly as truncate.sample_truncated would. False, with
    out untouched, for a row this path does not take (module docstring) or a top-p row whose candidates
    may not hold its kept set: the general path then draws it.

    vocab: the unpadded vocabulary size; arg [1]: the processed argmax; total [1] float64: a full row's
    whole mass (None for other rows).
    """
    k = p.top_k if p.top_k < vocab else 0
    if proc.x.device.type != "cpu" or k > proc.bm.shape[1]:
        return False
    rows = torch.zeros(1, dtype=torch.int64)
    theta_t = thresholds(proc, cfg, wts, rows, arg, total) if cfg.full[0] else _theta(proc, cfg, p, k)
    theta_t = theta_t.to(torch.float64)  # [1], so comparisons promote to float64
    blocks = (proc.bm[0] >= theta_t).nonzero()[:, 0]  # [T] candidate blocks, ascending
    vals = proc.blocks(torch.zeros_like(blocks), blocks)  # [T, 64]
    pos = (vals >= theta_t).view(-1).nonzero()[:, 0]  # [M] member positions in the flat blocks
    if pos.numel() > MAX_MEMBERS:
        return False
    members = _canonical(pos.tolist(), vals.view(-1)[pos].tolist(), blocks.tolist())
    tok = torch.tensor([[t for _, _, t in members]])  # [1, M] canonical order
    v = torch.tensor([[val for val, _, _ in members]], dtype=torch.float32)
    w = wts.tokens(rows, tok, v)[0].tolist()  # weights, as the general path computes them
    kept = _top_k(members, k)
    if p.top_p < 1:
        z = total.item() if total is not None else _running(_chunk_sums(members, w, kept, blocks.numel()))[1]
        kept, covered = _top_p(w, kept, p.top_p * z)
        if not (covered or k or theta_t.item() == NEG_INF):
            return False
    if p.min_p > 0:
        bar = _f32(_f32(p.min_p) * w[0])  # float32 min_p * w(first), as the tensors compute it
        kept = [keep and wi >= bar for keep, wi in zip(kept, w, strict=True)]
    cum, z = _running(_chunk_sums(members, w, kept, blocks.numel()))
    t = min(u * z, z * BELOW)
    c = bisect.bisect_right(cum, t)  # first chunk whose running sum exceeds t
    chunk = [0.0] * BLOCK
    for (_, position, _), wi, keep in zip(members, w, kept, strict=True):
        if keep and position >> BLOCK_SHIFT == c:
            chunk[position & (BLOCK - 1)] = wi
    cw, chunk_z = _running(chunk)
    j = bisect.bisect_right(cw, min(t - (cum[c - 1] if c else 0.0), chunk_z * BELOW))
    w_tok = torch.tensor([chunk[j]], dtype=torch.float32)
    out.put(rows, torch.tensor([int(blocks[c]) * BLOCK + j]), w_tok, torch.tensor([z], dtype=torch.float64))
    return True


def _theta(proc: Processed, cfg: RowConfig, p: SamplingParams, k: int) -> torch.Tensor:
    """truncate.thresholds() of a row that is not full, in fewer ops: [1] float64."""
    theta = proc.bm[0].topk(k).values[k - 1 : k].double() if k else torch.full((1,), NEG_INF, dtype=torch.float64)
    if p.min_p > 0 and not (k and p.top_p < 1):
        theta = torch.maximum(theta, min_p_threshold(proc.m, cfg.temperature, cfg.min_p))
    return theta


def _canonical(pos: list[int], vals: list[float], blocks: list[int]) -> list[tuple[float, int, int]]:
    """(value, flat position, token id) of each member, value descending then token id ascending."""
    members = [(v, q, (blocks[q >> BLOCK_SHIFT] << BLOCK_SHIFT) | (q & (BLOCK - 1))) for q, v in zip(pos, vals)]
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
    for keep, wi in zip(kept, w, strict=True):
        out.append(keep and before < bound)
        before += wi if keep else 0.0
    return out, before >= bound


def _chunk_sums(members: list[tuple[float, int, int]], w: list[float], kept: list[bool], n_blocks: int) -> list[float]:
    """float32 sums of the kept weights per candidate block (torch's sum over [T, 64], as the general path)."""
    flat = torch.zeros(n_blocks * BLOCK, dtype=torch.float32)
    sel = [(q, wi) for (_, q, _), wi, keep in zip(members, w, kept, strict=True) if keep]
    if sel:
        flat[torch.tensor([q for q, _ in sel])] = torch.tensor([wi for _, wi in sel], dtype=torch.float32)
    return flat.view(n_blocks, BLOCK).sum(-1).tolist()


def _running(values: list[float]) -> tuple[list[float], float]:
    """Sequential float64 running sums and the total (torch's CPU cumsum adds in the same order)."""
    cum: list[float] = []
    acc = 0.0
    for x in values:
        acc += x
        cum.append(acc)
    return cum, acc


def _f32(x: float) -> float:
    """x rounded to float32 (round to nearest even, as a C cast)."""
    return float(struct.unpack("f", struct.pack("f", x))[0])
