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
    bm = x.view(x.shape[0], -1, BLOCK).amax(-1)  # [B, nb]; NaN propagates
    top = bm.amax(-1)  # [B]
    finite = math.isfinite(top.item()) if top.numel() == 1 else bool(torch.isfinite(top).all())
    if not finite:
        x, bm = _sanitise(x, bm, ~torch.isfinite(top), vocab, logits)
        top = bm.amax(-1)
    return x, bm, top


def _sanitise(
    x: torch.Tensor, bm: torch.Tensor, bad: torch.Tensor, vocab: int, logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone() if x.data_ptr() == logits.data_ptr() else x
    rows = bad.nonzero()[:, 0]
    r = torch.nan_to_num(x[rows, :vocab], nan=NEG_INF, posinf=FLOAT_MAX)  # [n, V]
    empty = r.amax(-1) == NEG_INF  # [n]
    r[empty] = 0.0
    x[rows, :vocab] = r
    bm[rows] = x[rows].view(rows.numel(), -1, BLOCK).amax(-1)
    return x, bm


class Processed:
    """Processed logits s = x with sparse edits, kept as x plus patched copies of the edited blocks."""

    def __init__(
        self,
        x: torch.Tensor,
        bm_raw: torch.Tensor,
        m_raw: torch.Tensor,
        edits: tuple[torch.Tensor, torch.Tensor] | None,
    ):
        self.x = x  # [B, Vp] raw (sanitised, padded)
        self.bm_raw = bm_raw  # [B, nb]
        self.xb = x.view(x.shape[0], -1, BLOCK)  # [B, nb, 64]
        self.patch_map: torch.Tensor | None = None  # [B, nb] index into patches or -1
        self.patches: torch.Tensor | None = None  # [P, 64] processed values of edited blocks
        self.bm = bm_raw
        self.m = m_raw  # [B] processed row maximum (bm_raw.amax(-1) until edits change it)
        if edits is not None:
            self._apply(*edits)
            self.m = self.bm.amax(-1)

    def _apply(self, idx: torch.Tensor, val: torch.Tensor) -> None:
        """Store edited blocks; idx [M] sorted flat positions into x, val [M] their new values."""
        ublocks, inv = torch.unique_consecutive(idx >> BLOCK_SHIFT, return_inverse=True)  # [P]
        patches = self.block_rows(ublocks)  # [P, 64] a copy
        patches[inv, idx % BLOCK] = val
        self.patches = patches
        self.patch_map = torch.full(self.bm_raw.shape, -1, dtype=torch.int64, device=idx.device)
        self.patch_map.view(-1)[ublocks] = torch.arange(ublocks.numel(), device=idx.device)
        self.bm = self.bm_raw.clone()
        self.bm.view(-1)[ublocks] = patches.amax(-1)

    def drop_edits(self, rows: torch.Tensor) -> None:
        """Forget the edits of `rows` (used when they would mask every token)."""
        assert self.patch_map is not None, "drop_edits without edits"
        self.patch_map[rows] = -1
        self.bm[rows] = self.bm_raw[rows]
        self.m = self.bm.amax(-1)

    def block_rows(self, flat: torch.Tensor) -> torch.Tensor:
        """Raw values [T, 64] of the blocks at flat block indices [T] (row * nb + block): a new tensor.
        index_select, because advanced indexing of [B, nb, 64] by (rows, blocks) is several times slower."""
        return self.xb.view(-1, BLOCK).index_select(0, flat)

    def blocks(self, rows: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """Processed values [T, 64] of blocks [T] of batch rows [T]."""
        out = self.block_rows(rows * self.xb.shape[1] + blocks)  # [T, 64]
        if self.patch_map is not None and self.patches is not None:  # set together by _apply
            pi = self.patch_map[rows, blocks]  # [T]
            hit = pi >= 0
            if bool(hit.any()):
                out[hit] = self.patches[pi[hit]]
        return out

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Processed values [n, Vp] of whole rows (a copy)."""
        out = self.x.index_select(0, rows)  # [n, Vp]
        if self.patch_map is not None and self.patches is not None:  # set together by _apply
            pi = self.patch_map[rows]  # [n, nb]
            hit = pi >= 0
            if bool(hit.any()):
                out.view(rows.numel(), -1, BLOCK)[hit] = self.patches[pi[hit]]
        return out


def first_argmax(
    bm: torch.Tensor, top: torch.Tensor, get_blocks: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Lowest token id holding the row maximum; bm [n, nb] block maxima, top [n] row maxima."""
    if bm.shape[0] == 1 and bm.device.type == "cpu":  # one row: Python's list.index, fewer tensor ops
        m = top.item()
        block = bm[0].tolist().index(m)  # float equality, as ==: -0.0 equals 0.0
        offset = get_blocks(torch.tensor([block]))[0].tolist().index(m)
        return torch.tensor([block * BLOCK + offset])
    b = (bm == top[:, None]).to(torch.int8).argmax(-1)  # [n] first block holding the max
    vals = get_blocks(b)  # [n, 64]
    j = (vals == top[:, None]).to(torch.int8).argmax(-1)  # [n]
    return b * BLOCK + j
