"""Candidate extraction: every token at or above a per-row threshold, in canonical order.

Each row reads only its own blocks (a ragged list), so one row that needs many blocks costs the
others nothing. Members (tokens >= theta) are padded per row into [n, C] matrices in canonical
order: value descending, then token id ascending.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .blocks import BLOCK, BLOCK_SHIFT

LOW32 = (1 << 32) - 1
TOKEN_BITS = 20  # packed sort key: row (11 bits) | descending value key (32) | token id (20)
RADIX_MIN = 1 << 15  # torch sorts int64 by radix from this length, far faster than below it


def value_keys(v: torch.Tensor) -> torch.Tensor:
    """int64 keys in [0, 2**32) ordered like the float32 values (-0.0 == +0.0, -inf lowest)."""
    b = (v + 0.0).view(torch.int32)
    return torch.where(b < 0, b ^ 0x7FFFFFFF, b).to(torch.int64) + (1 << 31)


def sort_indices(keys: torch.Tensor) -> torch.Tensor:
    """argsort of distinct int64 keys [M]; mid-sized inputs are padded onto torch's radix sort."""
    m = keys.numel()
    if RADIX_MIN // 8 <= m < RADIX_MIN:
        pad = torch.full((RADIX_MIN - m,), 2**63 - 1, dtype=keys.dtype, device=keys.device)
        return torch.cat([keys, pad]).sort().indices[:m]
    return keys.sort().indices


def canonical_order(row: torch.Tensor, vals: torch.Tensor, tok: torch.Tensor, n: int, vocab: int) -> torch.Tensor:
    """Permutation [M] grouping rows ascending, each in canonical order."""
    desc = LOW32 - value_keys(vals)  # [0, 2**32): ascending = value descending
    if n <= (1 << 11) and vocab <= (1 << TOKEN_BITS):  # one sort of a packed key
        return sort_indices((row << 52) | (desc << TOKEN_BITS) | tok)
    perm = sort_indices((desc - (1 << 31)) * (1 << 32) + tok)  # signed, so no overflow
    return perm[row[perm].sort(stable=True).indices]


@dataclass
class Candidates:
    """The selected blocks of n rows, flat, and the members (>= theta) per row, canonical order."""

    row: torch.Tensor  # [T] local row of each selected block
    block: torch.Tensor  # [T] block id (ascending within a row)
    start: torch.Tensor  # [n] index of each row's first block in the flat list
    width: int  # most blocks of one row
    pos: torch.Tensor  # [n, C] member positions into the flat [T * 64] block values
    token: torch.Tensor  # [n, C] member token ids
    vals: torch.Tensor  # [n, C] member values (-inf on padding)
    valid: torch.Tensor  # [n, C] bool (False on padding)
    count: torch.Tensor  # [n] members per row

    def per_row(self, flat: torch.Tensor) -> torch.Tensor:
        """Block-level values [T] as a per-row matrix [n, width], zero-padded, block order kept."""
        if self.start.numel() == 1 and flat.numel() == self.width:  # one row: no padding to place
            return flat.view(1, -1)
        slot = torch.arange(self.row.numel(), device=flat.device) - self.start[self.row]
        out = torch.zeros((self.start.numel(), self.width), dtype=flat.dtype, device=flat.device)
        out[self.row, slot] = flat
        return out

    def scatter(self, w: torch.Tensor) -> torch.Tensor:
        """Member values w [n, C] (zero on padding) laid over the selected blocks [T, 64]."""
        out = torch.zeros(self.row.numel() * BLOCK + 1, dtype=w.dtype, device=w.device)
        out[torch.where(self.valid, self.pos, -1)] = w  # padding lands on the spare last slot
        return out[:-1].view(-1, BLOCK)


Getter = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (row [T], block [T]) -> [T, 64]


def extract(get_blocks: Getter, bm: torch.Tensor, theta: torch.Tensor) -> Candidates:
    """All tokens with value >= theta [n] of rows whose block maxima are bm [n, nb]."""
    n, nb = bm.shape
    hit = bm >= theta[:, None]  # [n, nb]
    row, block = hit.nonzero(as_tuple=True)  # [T] row-major, blocks ascending
    per_row = hit.sum(1)
    vals = get_blocks(row, block)  # [T, 64]
    pos = (vals >= theta[row, None]).view(-1).nonzero()[:, 0]  # [M] member positions
    bidx = pos >> BLOCK_SHIFT
    tok = (block[bidx] << BLOCK_SHIFT) | (pos & (BLOCK - 1))
    v = vals.view(-1)[pos]
    mrow = row[bidx]
    perm = canonical_order(mrow, v, tok, n, nb * BLOCK)
    if n == 1:  # one row: its members are the matrices' only row (the same values, fewer ops)
        return _one_row(row, block, per_row, pos[perm], tok[perm], v[perm])
    mrow, pos, tok, v = mrow[perm], pos[perm], tok[perm], v[perm]
    count = torch.bincount(mrow, minlength=n)
    slot = torch.arange(mrow.numel(), device=bm.device) - (torch.cumsum(count, 0) - count)[mrow]
    width = max(int(count.max()), 1)
    mats = [
        torch.full((n, width), fill, dtype=t.dtype, device=bm.device)
        for t, fill in ((pos, 0), (tok, 0), (v, float("-inf")))
    ]
    for mat, t in zip(mats, (pos, tok, v), strict=True):
        mat[mrow, slot] = t
    pos_m, tok_m, vals_m = mats
    return Candidates(
        row,
        block,
        torch.cumsum(per_row, 0) - per_row,
        max(int(per_row.max()), 1),
        pos_m,
        tok_m,
        vals_m,
        torch.arange(width, device=bm.device) < count[:, None],
        count,
    )


def _one_row(
    row: torch.Tensor, block: torch.Tensor, per_row: torch.Tensor, pos: torch.Tensor, tok: torch.Tensor, v: torch.Tensor
) -> Candidates:
    """extract()'s result for a single row whose members pos/tok/v [M] are in canonical order."""
    count = per_row.new_full((1,), v.numel())
    if v.numel() == 0:  # no member: one padding slot, as the general path makes
        pos, tok, v = pos.new_zeros(1), tok.new_zeros(1), v.new_full((1,), float("-inf"))
    return Candidates(
        row,
        block,
        per_row.new_zeros(1),
        max(int(per_row[0]), 1),
        pos[None],
        tok[None],
        v[None],
        torch.arange(v.numel(), device=v.device)[None] < count[:, None],
        count,
    )
