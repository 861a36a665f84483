"""Block layout of the vocabulary: 64-token blocks, block maxima and sparse edits applied per block."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

BLOCK = 64
BLOCK_SHIFT = 6  # log2(BLOCK)
NEG_INF = float("-inf")
FLOAT_MAX = torch.finfo(torch.float32).max


def n_blocks(vocab: int) -> int:
    return -(-vocab // BLOCK)


def prepare(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x float32 [B, Vp] padded with -inf to whole blocks, block maxima [B, nb], row maxima [B]).

    Rows holding NaN or +inf are sanitised (NaN -> -inf, +inf -> float32 max); rows with no finite
    value become all zeros (uniform) so that every row has a finite maximum.
    """
    x = logits.to(torch.float32)
    vocab = x.shape[1]
    pad = n_blocks(vocab) * BLOCK - vocab
    x = F.pad(x, (0, pad), value=NEG_INF) if pad else x.contiguous()
    block_max = x.view(x.shape[0], -1, BLOCK).amax(-1)  # [B, nb]; NaN propagates
    row_max = block_max.amax(-1)  # [B]
    finite = math.isfinite(row_max.item()) if row_max.numel() == 1 else bool(torch.isfinite(row_max).all())
    if not finite:
        x, block_max = _sanitise(x, block_max, ~torch.isfinite(row_max), vocab, logits)
        row_max = block_max.amax(-1)
    return x, block_max, row_max


def _sanitise(
    x: torch.Tensor, block_max: torch.Tensor, bad: torch.Tensor, vocab: int, logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone() if x.data_ptr() == logits.data_ptr() else x
    rows = bad.nonzero()[:, 0]
    r = torch.nan_to_num(x[rows, :vocab], nan=NEG_INF, posinf=FLOAT_MAX)  # [n, V]
    empty = r.amax(-1) == NEG_INF  # [n]
    r[empty] = 0.0
    x[rows, :vocab] = r
    block_max[rows] = x[rows].view(rows.numel(), -1, BLOCK).amax(-1)
    return x, block_max


class ProcessedLogits:
    """Processed logits s = x with sparse edits, kept as x plus patched copies of the edited blocks."""

    def __init__(
        self,
        x: torch.Tensor,
        raw_block_max: torch.Tensor,
        raw_max: torch.Tensor,
        edits: tuple[torch.Tensor, torch.Tensor] | None,
    ):
        self.x = x  # [B, Vp] raw (sanitised, padded)
        self.raw_block_max = raw_block_max  # [B, nb]
        self.raw_blocks = x.view(x.shape[0], -1, BLOCK)  # [B, nb, 64]
        self.patch_map: torch.Tensor | None = None  # [B, nb] index into patches or -1
        self.patches: torch.Tensor | None = None  # [P, 64] processed values of edited blocks
        self.block_max = raw_block_max
        self.row_max = raw_max  # [B] processed row maximum (raw_block_max.amax(-1) until edits change it)
        if edits is not None:
            self._apply(*edits)
            self.row_max = self.block_max.amax(-1)

    def _apply(self, positions: torch.Tensor, values: torch.Tensor) -> None:
        """Store edited blocks; positions [M] sorted flat positions into x, values [M] their new values."""
        edited_blocks, patch_of_edit = torch.unique_consecutive(positions >> BLOCK_SHIFT, return_inverse=True)  # [P]
        patches = self.block_rows(edited_blocks)  # [P, 64] a copy
        patches[patch_of_edit, positions % BLOCK] = values
        self.patches = patches
        self.patch_map = torch.full(self.raw_block_max.shape, -1, dtype=torch.int64, device=positions.device)
        self.patch_map.view(-1)[edited_blocks] = torch.arange(edited_blocks.numel(), device=positions.device)
        self.block_max = self.raw_block_max.clone()
        self.block_max.view(-1)[edited_blocks] = patches.amax(-1)

    def drop_edits(self, rows: torch.Tensor) -> None:
        """Forget the edits of `rows` (used when they would mask every token)."""
        assert self.patch_map is not None, "drop_edits without edits"
        self.patch_map[rows] = -1
        self.block_max[rows] = self.raw_block_max[rows]
        self.row_max = self.block_max.amax(-1)

    def block_rows(self, flat: torch.Tensor) -> torch.Tensor:
        """Raw values [T, 64] of the blocks at flat block indices [T] (row * nb + block): a new tensor.
        index_select, because advanced indexing of [B, nb, 64] by (rows, blocks) is several times slower."""
        return self.raw_blocks.view(-1, BLOCK).index_select(0, flat)

    def blocks(self, rows: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """Processed values [T, 64] of blocks [T] of batch rows [T]."""
        out = self.block_rows(rows * self.raw_blocks.shape[1] + blocks)  # [T, 64]
        if self.patch_map is not None and self.patches is not None:  # set together by _apply
            patch_index = self.patch_map[rows, blocks]  # [T]
            hit = patch_index >= 0
            if bool(hit.any()):
                out[hit] = self.patches[patch_index[hit]]
        return out

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Processed values [n, Vp] of whole rows (a copy)."""
        out = self.x.index_select(0, rows)  # [n, Vp]
        if self.patch_map is not None and self.patches is not None:  # set together by _apply
            patch_index = self.patch_map[rows]  # [n, nb]
            hit = patch_index >= 0
            if bool(hit.any()):
                out.view(rows.numel(), -1, BLOCK)[hit] = self.patches[patch_index[hit]]
        return out


def first_argmax(
    block_max: torch.Tensor, row_max: torch.Tensor, get_blocks: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Lowest token id holding the row maximum; block_max [n, nb] block maxima, row_max [n] row maxima."""
    if block_max.shape[0] == 1 and block_max.device.type == "cpu":  # one row: Python's list.index, fewer tensor ops
        maximum = row_max.item()
        block = block_max[0].tolist().index(maximum)  # float equality, as ==: -0.0 equals 0.0
        offset = get_blocks(torch.tensor([block]))[0].tolist().index(maximum)
        return torch.tensor([block * BLOCK + offset])
    first_block = (block_max == row_max[:, None]).to(torch.int8).argmax(-1)  # [n] first block holding the max
    values = get_blocks(first_block)  # [n, 64]
    j = (values == row_max[:, None]).to(torch.int8).argmax(-1)  # [n]
    return first_block * BLOCK + j
