"""Per-row token weights: softmax(s / T) rows held in full, or exp((s - max) / T) on demand."""

from __future__ import annotations

import torch

from .blocks import BLOCK, BLOCK_SHIFT, ProcessedLogits
from .rows import RowConfig

P_REUSE_DROP = 16.0  # how far edits may lower a row's maximum and still reuse the raw softmax


class Weights:
    """Token weights of every sampled row; full rows also get their 64-token chunk sums.

    Full rows at temperature 1 whose edits keep max(s) in [max(x) - 16, max(x)] use the raw
    softmax P (shared with the logprobs), except that an edited token (s != x) weighs
    exp(s - lse(x)); the bound keeps every token that matters far above float32 underflow.
    Other full rows use softmax(s / T) computed here (s - max(s) first if s / T overflows).
    The remaining rows use exp((s - max(s)) / T), computed on the tokens asked for.
    """

    def __init__(
        self,
        processed: ProcessedLogits,
        config: RowConfig,
        probs: torch.Tensor,
        raw_max: torch.Tensor,
        lse: torch.Tensor,
    ) -> None:
        batch, nb = processed.block_max.shape
        device = probs.device
        self.processed, self.config = processed, config
        self.sources: list[tuple[torch.Tensor, torch.Tensor]] = []  # (bool mask [B], weights [N, Vp])
        self.index: torch.Tensor | None = None  # [B] row of each full row in its source
        self.sums: torch.Tensor | None = None  # [B, nb] chunk sums of full rows
        self.fix_map: torch.Tensor | None = None  # [B, nb] index into fixed or -1
        self.fixed: torch.Tensor | None = None  # [F, 64] weights of edited blocks of P rows
        if not bool(config.full.any()):
            return
        drop = raw_max - processed.row_max  # [B] how far the edits lowered the maximum
        plain = config.full & (config.temperature == 1) & (drop >= 0) & (drop <= P_REUSE_DROP)
        self.index = torch.arange(batch, device=device)
        self.sums = torch.zeros((batch, nb), dtype=torch.float32, device=device)
        rows = plain.nonzero()[:, 0]
        if rows.numel():
            self.sums[rows] = _chunk_sums(probs.view(batch, nb, BLOCK), rows)
            self.sources.append((plain, probs))
            if processed.patch_map is not None:
                self._fix_edited(probs.view(batch, nb, BLOCK), plain, lse)
        rows = (config.full & ~plain).nonzero()[:, 0]
        if rows.numel():
            own = _own_softmax(processed, config, rows)  # [n, Vp]
            self.index[rows] = torch.arange(rows.numel(), device=device)
            self.sums[rows] = own.view(rows.numel(), nb, BLOCK).sum(-1)
            self.sources.append((config.full & ~plain, own))

    def _fix_edited(self, prob_blocks: torch.Tensor, plain: torch.Tensor, lse: torch.Tensor) -> None:
        """Weights exp(s - lse) at the edited tokens of P rows, block by block."""
        processed = self.processed
        patch_map, patches, sums = processed.patch_map, processed.patches, self.sums
        assert patch_map is not None and patches is not None and sums is not None, "called only on edited full rows"
        row, blk = (patch_map >= 0).nonzero(as_tuple=True)  # [F0] edited blocks
        keep = plain[row]
        row, blk = row[keep], blk[keep]
        if row.numel() == 0:
            return
        s, x = (
            patches.index_select(0, patch_map[row, blk]),
            processed.block_rows(row * patch_map.shape[1] + blk),
        )  # [F, 64]
        self.fixed = torch.where(s != x, torch.exp(s - lse[row, None]), prob_blocks[row, blk])
        self.fix_map = torch.full(processed.block_max.shape, -1, dtype=torch.int64, device=row.device)
        self.fix_map[row, blk] = torch.arange(row.numel(), device=row.device)
        sums[row, blk] = self.fixed.sum(-1)

    def tokens(self, rows: torch.Tensor, tokens: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """float32 [n, K] weights of tokens [n, K] of batch rows [n]; values [n, K] their s values."""
        row_max, temperature = self.processed.row_max[rows], self.config.temperature[rows]
        out = torch.exp((values - row_max[:, None]) / temperature[:, None])
        for mask, source in self.sources:
            selected = mask[rows]
            if bool(selected.any()):
                assert self.index is not None, "sources come with an index"
                out[selected] = source[self.index[rows[selected]][:, None], tokens[selected]]
        if self.fix_map is not None and self.fixed is not None:  # set together by _fix_edited
            fixed_index = self.fix_map[rows[:, None], tokens >> BLOCK_SHIFT]  # [n, K]
            hit = fixed_index >= 0
            if bool(hit.any()):
                out[hit] = self.fixed[fixed_index[hit], (tokens & (BLOCK - 1))[hit]]
        return out

    def chunk(self, rows: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """float32 [n, 64] weights of block blocks[i] of full row rows[i]."""
        tokens = blocks[:, None] * BLOCK + torch.arange(BLOCK, device=rows.device)
        if self.fix_map is None:
            for mask, source in self.sources:
                if bool(mask[rows].all()):
                    assert self.index is not None, "sources come with an index"
                    return source[self.index[rows][:, None], tokens]
        return self.tokens(rows, tokens, self.processed.blocks(rows, blocks))


def _chunk_sums(weight_blocks: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """float32 [n, nb]: 64-token sums of rows src [n] of wb [N, nb, 64]."""
    if source.numel() * 2 >= weight_blocks.shape[0]:
        return weight_blocks.sum(-1)[source]
    return weight_blocks.index_select(0, source).sum(-1)


def _own_softmax(processed: ProcessedLogits, config: RowConfig, rows: torch.Tensor) -> torch.Tensor:
    """softmax(s / T) [n, Vp] of rows [n] (the softmax runs in place on s / T)."""
    temperature, row_max = config.temperature[rows], processed.row_max[rows]
    overflow = ~torch.isfinite(row_max / temperature)
    if rows.numel() == processed.x.shape[0] and processed.patch_map is None and not bool(overflow.any()):
        s = torch.div(processed.x, temperature[:, None])  # every row: no gather copy (never all temperature 1 here)
    else:
        s = processed.rows(rows)
        if bool(overflow.any()):
            s[overflow] -= row_max[overflow, None]  # keeps s / T finite; same distribution
        if not bool((temperature == 1).all()):
            s.div_(temperature[:, None])
    if s.device.type != "cpu":
        return torch.softmax(s, -1)
    out: torch.Tensor = torch.ops.aten._softmax.out(s, -1, False, out=s)  # in place: the CPU kernel reads a row first
    return out
