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


def value_keys(values: torch.Tensor) -> torch.Tensor:
    """int64 keys in [0, 2**32) ordered like the float32 values (-0.0 == +0.0, -inf lowest)."""
    b = (values + 0.0).view(torch.int32)
    return torch.where(b < 0, b ^ 0x7FFFFFFF, b).to(torch.int64) + (1 << 31)


def sort_indices(keys: torch.Tensor) -> torch.Tensor:
    """argsort of distinct int64 keys [M]; mid-sized inputs are padded onto torch's radix sort."""
    n_keys = keys.numel()
    if RADIX_MIN // 8 <= n_keys < RADIX_MIN:
        pad = torch.full((RADIX_MIN - n_keys,), 2**63 - 1, dtype=keys.dtype, device=keys.device)
        return torch.cat([keys, pad]).sort().indices[:n_keys]
    return keys.sort().indices


def canonical_order(row: torch.Tensor, values: torch.Tensor, tokens: torch.Tensor, n: int, vocab: int) -> torch.Tensor:
    """Permutation [M] grouping rows ascending, each in canonical order."""
    desc = LOW32 - value_keys(values)  # [0, 2**32): ascending = value descending
    if n <= (1 << 11) and vocab <= (1 << TOKEN_BITS):  # one sort of a packed key
        return sort_indices((row << 52) | (desc << TOKEN_BITS) | tokens)
    perm = sort_indices((desc - (1 << 31)) * (1 << 32) + tokens)  # signed, so no overflow
    return perm[row[perm].sort(stable=True).indices]


@dataclass
class Candidates:
    """The selected blocks of n rows, flat, and the members (>= theta) per row, canonical order."""

    row: torch.Tensor  # [T] local row of each selected block
    block: torch.Tensor  # [T] block id (ascending within a row)
    start: torch.Tensor  # [n] index of each row's first block in the flat list
    width: int  # most blocks of one row
    position: torch.Tensor  # [n, C] member positions into the flat [T * 64] block values
    token: torch.Tensor  # [n, C] member token ids
    value: torch.Tensor  # [n, C] member values (-inf on padding)
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
        out[torch.where(self.valid, self.position, -1)] = w  # padding lands on the spare last slot
        return out[:-1].view(-1, BLOCK)


Getter = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (row [T], block [T]) -> [T, 64]


def extract(get_blocks: Getter, block_max: torch.Tensor, theta: torch.Tensor) -> Candidates:
    """All tokens with value >= theta [n] of rows whose block maxima are block_max [n, nb]."""
    n, nb = block_max.shape
    hit = block_max >= theta[:, None]  # [n, nb]
    row, block = hit.nonzero(as_tuple=True)  # [T] row-major, blocks ascending
    per_row = hit.sum(1)
    block_values = get_blocks(row, block)  # [T, 64]
    positions = (block_values >= theta[row, None]).view(-1).nonzero()[:, 0]  # [M] member positions
    member_block = positions >> BLOCK_SHIFT
    tokens = (block[member_block] << BLOCK_SHIFT) | (positions & (BLOCK - 1))
    values = block_values.view(-1)[positions]
    member_row = row[member_block]
    perm = canonical_order(member_row, values, tokens, n, nb * BLOCK)
    if n == 1:  # one row: its members are the matrices' only row (the same values, fewer ops)
        return _one_row(row, block, per_row, positions[perm], tokens[perm], values[perm])
    member_row, positions, tokens, values = member_row[perm], positions[perm], tokens[perm], values[perm]
    count = torch.bincount(member_row, minlength=n)
    slot = torch.arange(member_row.numel(), device=block_max.device) - (torch.cumsum(count, 0) - count)[member_row]
    width = max(int(count.max()), 1)
    mats = [
        torch.full((n, width), fill, dtype=t.dtype, device=block_max.device)
        for t, fill in ((positions, 0), (tokens, 0), (values, float("-inf")))
    ]
    for mat, t in zip(mats, (positions, tokens, values), strict=True):
        mat[member_row, slot] = t
    pos_m, tok_m, vals_m = mats
    return Candidates(
        row,
        block,
        torch.cumsum(per_row, 0) - per_row,
        max(int(per_row.max()), 1),
        pos_m,
        tok_m,
        vals_m,
        torch.arange(width, device=block_max.device) < count[:, None],
        count,
    )


def _one_row(
    row: torch.Tensor,
    block: torch.Tensor,
    per_row: torch.Tensor,
    positions: torch.Tensor,
    tokens: torch.Tensor,
    values: torch.Tensor,
) -> Candidates:
    """extract()'s result for a single row whose members positions/tokens/values [M] are in canonical order."""
    count = per_row.new_full((1,), values.numel())
    if values.numel() == 0:  # no member: one padding slot, as the general path makes
        positions, tokens, values = positions.new_zeros(1), tokens.new_zeros(1), values.new_full((1,), float("-inf"))
    return Candidates(
        row,
        block,
        per_row.new_zeros(1),
        max(int(per_row[0]), 1),
        positions[None],
        tokens[None],
        values[None],
        torch.arange(values.numel(), device=values.device)[None] < count[:, None],
        count,
    )
