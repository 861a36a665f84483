"""Per-row token weights: softmax(s / T) rows held in full, or exp((s - max) / T) on demand."""

from __future__ import annotations

import torch

from .blocks import BLOCK, BLOCK_SHIFT, Processed
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
        self, proc: Processed, cfg: RowConfig, probs: torch.Tensor, m_raw: torch.Tensor, lse: torch.Tensor
    ) -> None:
        batch, nb = proc.bm.shape
        dev = probs.device
        self.proc, self.cfg = proc, cfg
        self.sources: list[tuple[torch.Tensor, torch.Tensor]] = []  # (bool mask [B], weights [N, Vp])
        self.index: torch.Tensor | None = None  # [B] row of each full row in its source
        self.sums: torch.Tensor | None = None  # [B, nb] chunk sums of full rows
        self.fix_map: torch.Tensor | None = None  # [B, nb] index into fixed or -1
        self.fixed: torch.Tensor | None = None  # [F, 64] weights of edited blocks of P rows
        if not bool(cfg.full.any()):
            return
        drop = m_raw - proc.m  # [B] how far the edits lowered the maximum
        plain = cfg.full & (cfg.temperature == 1) & (drop >= 0) & (drop <= P_REUSE_DROP)
        self.index = torch.arange(batch, device=dev)
        self.sums = torch.zeros((batch, nb), dtype=torch.float32, device=dev)
        rows = plain.nonzero()[:, 0]
        if rows.numel():
            self.sums[rows] = _chunk_sums(probs.view(batch, nb, BLOCK), rows)
            self.sources.append((plain, probs))
            if proc.patch_map is not None:
                self._fix_edited(probs.view(batch, nb, BLOCK), plain, lse)
        rows = (cfg.full & ~plain).nonzero()[:, 0]
        if rows.numel():
            own = _own_softmax(proc, cfg, rows)  # [n, Vp]
            self.index[rows] = torch.arange(rows.numel(), device=dev)
            self.sums[rows] = own.view(rows.numel(), nb, BLOCK).sum(-1)
            self.sources.append((cfg.full & ~plain, own))

    def _fix_edited(self, probs_b: torch.Tensor, plain: torch.Tensor, lse: torch.Tensor) -> None:
        """Weights exp(s - lse) at the edited tokens of P rows, block by block."""
        proc = self.proc
        patch_map, patches, sums = proc.patch_map, proc.patches, self.sums
        assert patch_map is not None and patches is not None and sums is not None, "called only on edited full rows"
        row, blk = (patch_map >= 0).nonzero(as_tuple=True)  # [F0] edited blocks
        keep = plain[row]
        row, blk = row[keep], blk[keep]
        if row.numel() == 0:
            return
        s, x = patches.index_select(0, patch_map[row, blk]), proc.block_rows(row * patch_map.shape[1] + blk)  # [F, 64]
        self.fixed = torch.where(s != x, torch.exp(s - lse[row, None]), probs_b[row, blk])
        self.fix_map = torch.full(proc.bm.shape, -1, dtype=torch.int64, device=row.device)
        self.fix_map[row, blk] = torch.arange(row.numel(), device=row.device)
        sums[row, blk] = self.fixed.sum(-1)

    def tokens(self, rows: torch.Tensor, tokens: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """float32 [n, K] weights of tokens [n, K] of batch rows [n]; vals [n, K] their s values."""
        m, temp = self.proc.m[rows], self.cfg.temperature[rows]
        out = torch.exp((vals - m[:, None]) / temp[:, None])
        for mask, src in self.sources:
            sel = mask[rows]
            if bool(sel.any()):
                assert self.index is not None, "sources come with an index"
                out[sel] = src[self.index[rows[sel]][:, None], tokens[sel]]
        if self.fix_map is not None and self.fixed is not None:  # set together by _fix_edited
            fi = self.fix_map[rows[:, None], tokens >> BLOCK_SHIFT]  # [n, K]
            hit = fi >= 0
            if bool(hit.any()):
                out[hit] = self.fixed[fi[hit], (tokens & (BLOCK - 1))[hit]]
        return out

    def chunk(self, rows: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """float32 [n, 64] weights of block blocks[i] of full row rows[i]."""
        tok = blocks[:, None] * BLOCK + torch.arange(BLOCK, device=rows.device)
        if self.fix_map is None:
            for mask, src in self.sources:
                if bool(mask[rows].all()):
                    assert self.index is not None, "sources come with an index"
                    return src[self.index[rows][:, None], tok]
        return self.tokens(rows, tok, self.proc.blocks(rows, blocks))


def _chunk_sums(wb: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """float32 [n, nb]: 64-token sums of rows src [n] of wb [N, nb, 64]."""
    if src.numel() * 2 >= wb.shape[0]:
        return wb.sum(-1)[src]
    return wb.index_select(0, src).sum(-1)


def _own_softmax(proc: Processed, cfg: RowConfig, rows: torch.Tensor) -> torch.Tensor:
    """softmax(s / T) [n, Vp] of rows [n] (the softmax runs in place on s / T)."""
    t, m = cfg.temperature[rows], proc.m[rows]
    overflow = ~torch.isfinite(m / t)
    if rows.numel() == proc.x.shape[0] and proc.patch_map is None and not bool(overflow.any()):
        s = torch.div(proc.x, t[:, None])  # every row: no gather copy (never all temperature 1 here)
    else:
        s = proc.rows(rows)
        if bool(overflow.any()):
            s[overflow] -= m[overflow, None]  # keeps s / T finite; same distribution
        if not bool((t == 1).all()):
            s.div_(t[:, None])
    if s.device.type != "cpu":
        return torch.softmax(s, -1)
    out: torch.Tensor = torch.ops.aten._softmax.out(s, -1, False, out=s)  # in place: the CPU kernel reads a row first
    return out
