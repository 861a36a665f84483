"""A batch-invariant decoder-only transformer (Llama family) over packed token rows.

Why our own forward pass: a token's logits and KV entries must not depend on what
else is in the batch, nor on how its sequence was split into steps (a prefill chunk
of any size, or one decode row). On CPU, `F.linear` gives a row different bits when
the row count is small or the row sits in a partial micro-tile (docs/architecture.md),
and scaled-dot-product attention changes its reduction with the query count. So:

* every GEMM, decode rows included, cuts its rows into tiles of ROW_TILE rows
  (zero-padded) and multiplies each tile as its own matrix of one batched GEMM,
  so every product has one fixed shape whatever the row count. A plain `F.linear`
  is not enough: on an AVX-512 machine a row's bits changed between 8 and 64 rows
  (tests/engine prove the tiles per shape and row count);
* attention computes each query at a fixed place: queries sit in tiles of
  QUERY_TILE absolute positions, keys in blocks of KEY_BLOCK absolute positions,
  every score and value product is a matmul of one fixed shape, and the blocks
  are combined left to right; a block after the query's own is never added
  (see _attention_segment);
* everything else (embedding, RMSNorm, RoPE, SiLU) is row-wise.

On CUDA a kernel's bits may also depend on a call's batch count and row count, so there the model runs the
fixed-shape policy of fixed_shapes.py: the same products, in calls of one shape each (on CPU, the same bits).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from .arch import ModelConfig, RopeSpec
from .fixed_shapes import (
    GROUP_TILES,
    AttentionPass,
    AttentionShape,
    configure_cuda_determinism,
    fixed_attention,
    grouped_linear,
    per_group,
    plan_attention,
    policy_tag,
    resolve_policy,
    softcap,
)
from .kv_cache import SequenceKVCache, kv_tag

__all__ = ["ModelConfig", "DecoderModel", "Segment", "invariant_linear", "pad_rows", "describe"]

ROW_TILE = 16  # GEMM rows go in tiles of this many, one matrix each (see tests/engine/test_gemm_invariance.py)
KEY_BLOCK = 128  # attention reduces keys in blocks of this many absolute positions (divides GROW_BLOCK)
QUERY_TILE = 4  # attention computes queries in tiles of this many absolute positions (divides KEY_BLOCK)
TILE_GROUP = 8  # query tiles per batched attention call: bounds memory, changes no bits


@dataclasses.dataclass
class Segment:
    """A run of consecutive tokens of one sequence inside a packed step."""

    cache: SequenceKVCache
    start: int  # position of the first token of this run in its sequence
    length: int  # number of tokens in the run


def invariant_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, tile: int = ROW_TILE
) -> torch.Tensor:
    """`F.linear` whose row results do not depend on the row count. x: [M, K], M % tile == 0.

    Each tile of `tile` rows is one matrix of a batched GEMM with the weight: every product has the
    shape [tile, K] @ [K, N] and the same memory layout, however many tiles there are.
    """
    rows, k = x.shape
    assert rows % tile == 0, "pad rows with pad_rows() first"
    n, tiles = weight.shape[0], rows // tile
    out = torch.bmm(x.contiguous().view(tiles, tile, k), weight.t().expand(tiles, k, n)).view(rows, n)
    return out + bias if bias is not None else out


def pad_rows(x: torch.Tensor, tile: int = ROW_TILE) -> torch.Tensor:
    """Zero-pad dim 0 up to a multiple of `tile` (at least one tile)."""
    rows = x.shape[0]
    padded = max(tile, -(-rows // tile) * tile)
    if padded == rows:
        return x
    return torch.cat([x, x.new_zeros((padded - rows,) + tuple(x.shape[1:]))])


class Layer:
    """Weights of one decoder layer (canonical names, arch.canonical_state_dict), q/k/v and gate/up fused."""

    def __init__(self, sd: dict[str, torch.Tensor], prefix: str, cfg: ModelConfig):
        a, m = prefix + "self_attn.", prefix + "mlp."
        self.qkv = torch.cat([sd[a + "q_proj.weight"], sd[a + "k_proj.weight"], sd[a + "v_proj.weight"]])
        self.qkv_bias = _cat_bias(sd, [a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"], cfg.attention_bias)
        self.o = sd[a + "o_proj.weight"]
        self.o_bias = _cat_bias(sd, [a + "o_proj.bias"], cfg.attention_out_bias)
        self.gate_up = torch.cat([sd[m + "gate_proj.weight"], sd[m + "up_proj.weight"]])
        self.gate_up_bias = _cat_bias(sd, [m + "gate_proj.bias", m + "up_proj.bias"], cfg.mlp_bias)
        self.down = sd[m + "down_proj.weight"]
        self.down_bias = _cat_bias(sd, [m + "down_proj.bias"], cfg.mlp_bias)
        self.norm_in = sd[prefix + "input_layernorm.weight"]
        self.norm_post = sd[prefix + "post_attention_layernorm.weight"]
        self.q_norm = sd.get(a + "q_norm.weight") if cfg.qk_norm else None  # [D]
        self.k_norm = sd.get(a + "k_norm.weight") if cfg.qk_norm else None
        self.attn_out_norm = sd.get(prefix + "attn_output_norm.weight") if cfg.sandwich_norms else None  # [H]
        self.mlp_out_norm = sd.get(prefix + "mlp_output_norm.weight") if cfg.sandwich_norms else None


def _cat_bias(sd: dict[str, torch.Tensor], names: list[str], present: bool) -> torch.Tensor | None:
    return torch.cat([sd[n] for n in names]) if present else None


class DecoderModel:
    """Llama-family forward over packed rows of many sequences, each with its own KV cache."""

    def __init__(
        self,
        cfg: ModelConfig,
        state_dict: Mapping[str, torch.Tensor],
        device: torch.device,
        dtype: torch.dtype,
        row_tile: int = ROW_TILE,
        kv_dtype: torch.dtype | None = None,
        shapes: str = "auto",
    ):
        # row_tile=1 turns padding off: faster at tiny batches, NOT batch-invariant (benchmarks only).
        self.cfg, self.device, self.dtype, self.row_tile = cfg, device, dtype, row_tile
        # shapes: "tiles" (this file's path), "fixed" (fixed_shapes.py, the same bits on CPU), "auto": by device
        self.shapes = resolve_policy(shapes, device)
        self.group_rows = row_tile * GROUP_TILES if self.shapes == "fixed" else 0  # rows per fixed-shape call
        if self.shapes == "fixed" and row_tile != ROW_TILE:
            raise ValueError(f"the fixed-shape policy needs row_tile={ROW_TILE}")
        if device.type == "cuda":
            configure_cuda_determinism()  # before any weight reaches the GPU (the cuBLAS workspace setting)
        # Keys and values are stored in kv_dtype (a rounding per element) and read back as float32.
        self.kv_dtype = kv_dtype or dtype
        # Speculation's price of one more row, as a fraction of a one-row step: rows are padded to a tile
        # of row_tile anyway, so a few more cost little (measured: 1, 2, 4, 8 rows 1.00x, 1.03x, 1.01x, 1.10x).
        self.draft_row_cost = 0.05
        sd = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
        self.embed = sd["model.embed_tokens.weight"]  # [V, H]
        self.lm_head = self.embed if cfg.tie_word_embeddings else sd["lm_head.weight"]  # [V, H]
        self.norm_final = sd["model.norm.weight"]
        self.layers = [Layer(sd, f"model.layers.{i}.", cfg) for i in range(cfg.num_layers)]
        self.rope = [self._rope_table(spec) for spec in cfg.ropes]  # per RopeSpec: cos, sin [P, R]
        self.embed_scale = torch.tensor(cfg.embed_scale, dtype=dtype, device=device)

    def _rope_table(self, spec: RopeSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [P, rotary_dim] in the rotate-half layout, computed in float64, times attention_scaling."""
        inv_freq = torch.tensor(spec.inv_freq, dtype=torch.float64)
        angles = torch.outer(torch.arange(self.cfg.max_context, dtype=torch.float64), inv_freq)  # [P, R/2]
        angles = torch.cat([angles, angles], dim=-1)  # [P, R]
        cos, sin = angles.cos(), angles.sin()
        if spec.attention_scaling != 1.0:
            cos, sin = cos * spec.attention_scaling, sin * spec.attention_scaling
        return cos.to(device=self.device, dtype=self.dtype), sin.to(device=self.device, dtype=self.dtype)

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x: [T, K] -> [T, N] on the padded-row path, one code path for prefill and decode rows."""
        if self.row_tile == 1:  # benchmark baseline: plain F.linear, not invariant
            return F.linear(x, weight, bias)
        if self.group_rows:
            return grouped_linear(pad_rows(x, self.group_rows), weight, bias, self.row_tile)[: x.shape[0]]
        return invariant_linear(pad_rows(x, self.row_tile), weight, bias, self.row_tile)[: x.shape[0]]

    @property
    def version_tag(self) -> str:
        """engine_version's part for the torch path: its tiles, and the KV cache's type where it is not the
        compute dtype."""
        fixed = policy_tag() if self.group_rows else ""
        return f"tile{ROW_TILE}.attn{QUERY_TILE}x{KEY_BLOCK}{fixed}" + kv_tag(self.kv_dtype, self.dtype)

    def new_cache(self) -> SequenceKVCache:
        c = self.cfg
        return SequenceKVCache(c.num_layers, c.num_kv_heads, c.head_dim, self.device, self.kv_dtype)

    def release_scratch(self) -> None:
        """Nothing to free: the torch path keeps no buffer between steps."""

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps)
        return weight * xf.to(x.dtype)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm of rows x [T, ..., H]; under the fixed-shape policy one group of rows per call."""
        if not self.group_rows:
            return self._rms_norm(x, weight)
        return per_group(x, self.group_rows, lambda rows: self._rms_norm(rows, weight))

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x: [T, heads, D]; cos/sin: [T, 1, R], R <= D: the first R dims of each head rotate (rotate-half)
        rot = cos.shape[-1]
        part = x[..., :rot]
        half = rot // 2
        rotated = torch.cat([-part[..., half:], part[..., :half]], dim=-1)
        out = part * cos + rotated * sin
        return out if rot == x.shape[-1] else torch.cat([out, x[..., rot:]], dim=-1)

    def _attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: int,
        segments: Sequence[Segment],
        passes: list[AttentionPass] | None,
    ) -> torch.Tensor:
        """Per-sequence attention. q: [T, Hq, D], k/v: [T, Hkv, D] -> [T, Hq*D]."""
        if passes is not None:  # the fixed-shape policy: every sequence's keys first, then one set of calls
            row = 0
            for seg in segments:
                seg.cache.write(layer, seg.start, k[row : row + seg.length], v[row : row + seg.length])
                row += seg.length
            c = self.cfg
            window = c.layers[layer].window
            shape = AttentionShape(c.num_kv_heads, c.scale, c.attn_softcap, window, QUERY_TILE, KEY_BLOCK)
            return fixed_attention(q, layer, passes, shape)
        out = q.new_empty(q.shape[0], q.shape[1] * q.shape[2])
        row = 0
        for seg in segments:
            n = seg.length
            # Keys first, so a chunk's queries and a later decode query read the same cache layout.
            seg.cache.write(layer, seg.start, k[row : row + n], v[row : row + n])
            for lo in range(0, n, TILE_GROUP * QUERY_TILE):  # groups only bound memory
                hi = min(n, lo + TILE_GROUP * QUERY_TILE)
                out[row + lo : row + hi] = self._attention_segment(
                    q[row + lo : row + hi], seg.cache, layer, seg.start + lo, self.cfg.layers[layer].window
                )
            row += n
        return out

    def _attention_segment(
        self, q: torch.Tensor, cache: SequenceKVCache, layer: int, start: int, window: int = 0
    ) -> torch.Tensor:
        """Causal attention of queries at positions start.. over `cache`. q: [n, Hq, D] -> [n, Hq*D].
        With a window W, a query at p sees keys p-W+1 .. p (the others are masked like future keys).

        Each query's bits depend only on itself and the keys/values before it:
        * the query sits at row (position % QUERY_TILE) of the tile of its absolute position, the
          other rows being other queries or zeros (a row of a matmul never reads another row);
        * scores are tile [QT*G, D] @ key block [D, KEY_BLOCK] and values block-probabilities
          [QT*G, KEY_BLOCK] @ [KEY_BLOCK, D]: one fixed shape per batched matrix, in one layout;
        * the softmax max is exact (order-free); per-block sums reduce one fixed-size row each;
        * block partials are summed by a sequential scan over blocks (cumsum), read at the
          tile's own last block: blocks after it exist only in longer chunks and add nothing.
        Computed in float32 whatever the model dtype.
        """
        c = self.cfg
        n, hq, d = q.shape
        hkv, g, qt = c.num_kv_heads, hq // c.num_kv_heads, QUERY_TILE
        first, last = start // qt, (start + n - 1) // qt  # query tiles, absolute
        tiles = last - first + 1
        blocks = (last * qt) // KEY_BLOCK + 1  # key blocks the last tile needs (all tiles' needs are <=)
        offset = start - first * qt
        qpad = q.new_zeros(tiles * qt, hq, d, dtype=torch.float32)
        qpad[offset : offset + n] = q.float() * c.scale
        # [tiles, QT, Hkv, G, D] -> [tiles, Hkv, QT*G, D]: the G query heads of a KV head share its keys.
        qtile = qpad.view(tiles, qt, hkv, g, d).permute(0, 2, 1, 3, 4).reshape(tiles, hkv, qt * g, d)
        keys = cache.keys[layer, :, : blocks * KEY_BLOCK].float()  # capacity is a multiple of KEY_BLOCK
        values = cache.values[layer, :, : blocks * KEY_BLOCK].float()
        kblk = keys.view(hkv, blocks, KEY_BLOCK, d).transpose(0, 1)  # [B, Hkv, KB, D]
        vblk = values.view(hkv, blocks, KEY_BLOCK, d).transpose(0, 1)
        shape = (tiles, blocks, hkv)
        qb = qtile[:, None].expand(*shape, qt * g, d).contiguous().view(-1, qt * g, d)
        kb = kblk[None].expand(*shape, KEY_BLOCK, d).contiguous().view(-1, KEY_BLOCK, d)
        vb = vblk[None].expand(*shape, KEY_BLOCK, d).contiguous().view(-1, KEY_BLOCK, d)
        scores = torch.bmm(qb, kb.transpose(1, 2)).view(*shape, qt, g, KEY_BLOCK)
        if c.attn_softcap:
            scores = softcap(scores, c.attn_softcap)
        qpos = (
            torch.arange(first, last + 1, device=q.device)[:, None] * qt + torch.arange(qt, device=q.device)[None, :]
        )  # [tiles, QT] nominal query positions
        kpos = torch.arange(blocks * KEY_BLOCK, device=q.device).view(blocks, KEY_BLOCK)
        kp, qp = kpos[None, :, None, None, None, :], qpos[:, None, None, :, None, None]
        allowed = kp <= qp
        if window:
            allowed &= kp > qp - window
        scores = torch.where(allowed, scores, float("-inf"))
        peak = scores.amax(dim=(1, 5), keepdim=True)  # every row sees its own key: finite
        probs = torch.exp(scores - peak)  # masked keys: exactly 0
        sums = probs.sum(dim=-1)  # [tiles, B, Hkv, QT, G]
        weighted = torch.bmm(probs.view(-1, qt * g, KEY_BLOCK), vb).view(*shape, qt, g, d)
        own = (torch.arange(first, last + 1, device=q.device) * qt) // KEY_BLOCK  # each tile's last block
        pick = own.view(tiles, 1, 1, 1, 1)
        total = torch.cumsum(sums, dim=1).gather(1, pick.expand(tiles, 1, hkv, qt, g))[:, 0]
        pick = own.view(tiles, 1, 1, 1, 1, 1)
        acc = torch.cumsum(weighted, dim=1).gather(1, pick.expand(tiles, 1, hkv, qt, g, d))[:, 0]
        attn = acc / total[..., None]  # [tiles, Hkv, QT, G, D]
        attn = attn.permute(0, 2, 1, 3, 4).reshape(tiles * qt, hq * d)[offset : offset + n]
        return attn.to(q.dtype)

    @torch.inference_mode()
    def forward(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        segments: Sequence[Segment],
        logit_rows: torch.Tensor,
    ) -> torch.Tensor:
        """Run packed rows. token_ids/positions: [T]; logit_rows: [R] row indices, ascending -> logits [R, V]
        float32. Decode and prefill rows share one code path, so a token's bits do not depend on how it
        was scheduled."""
        c = self.cfg
        passes = None
        if self.group_rows:  # fixed shapes: rows padded to whole groups (padding rows attend to nothing)
            token_ids, positions = pad_rows(token_ids, self.group_rows), pad_rows(positions, self.group_rows)
            passes = plan_attention(segments, QUERY_TILE, KEY_BLOCK, self.device)
        hidden = F.embedding(token_ids, self.embed)  # [T, H]
        if c.embed_scale != 1.0:
            hidden = hidden * self.embed_scale
        tables = [(cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)) for cos, sin in self.rope]  # [T, 1, R]
        for i, layer in enumerate(self.layers):
            hidden = self._layer(hidden, layer, i, tables, segments, passes)
        if logit_rows.numel() == 0:
            return hidden.new_zeros((0, c.vocab_size), dtype=torch.float32)
        last = hidden[logit_rows]  # [R, H]
        if self.group_rows:
            last = pad_rows(last, self.group_rows)
        last = self._norm(last, self.norm_final)
        logits = self._linear(last, self.lm_head)[: logit_rows.numel()].float()  # [R, V]
        if c.final_softcap:
            # columns padded to a multiple of 64: every element's vectorised tanh lane is the same in any batch
            pad = -c.vocab_size % 64
            logits = softcap(F.pad(logits, (0, pad)), c.final_softcap)[:, : c.vocab_size]
        return logits

    def _layer(
        self,
        hidden: torch.Tensor,
        layer: Layer,
        i: int,
        tables: list[tuple[torch.Tensor, torch.Tensor]],  # each RoPE's (cos, sin) [T, 1, R]
        segments: Sequence[Segment],
        passes: list[AttentionPass] | None,  # the fixed-shape policy's attention plan
    ) -> torch.Tensor:
        """One decoder layer over packed rows: hidden [T, H] -> [T, H]."""
        c, t = self.cfg, hidden.shape[0]
        q_width, kv_width = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        x = self._norm(hidden, layer.norm_in)
        qkv = self._linear(x, layer.qkv, layer.qkv_bias)  # [T, Hq*D + 2*Hkv*D]
        q = qkv[:, :q_width].view(t, c.num_heads, c.head_dim)
        k = qkv[:, q_width : q_width + kv_width].view(t, c.num_kv_heads, c.head_dim)
        v = qkv[:, q_width + kv_width :].view(t, c.num_kv_heads, c.head_dim)
        if layer.q_norm is not None and layer.k_norm is not None:  # both or neither (cfg.qk_norm)
            q, k = self._norm(q, layer.q_norm), self._norm(k, layer.k_norm)
        rope = c.layers[i].rope
        if rope >= 0:
            q, k = self._rope(q, *tables[rope]), self._rope(k, *tables[rope])
        out = self._linear(self._attention(q, k, v, i, segments, passes), layer.o, layer.o_bias)  # [T, H]
        if layer.attn_out_norm is not None:
            out = self._norm(out, layer.attn_out_norm)
        hidden = hidden + out
        x = self._norm(hidden, layer.norm_post)
        gate, up = self._linear(x, layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
        act = F.silu(gate) if c.activation == "silu" else F.gelu(gate, approximate="tanh")
        out = self._linear(act * up, layer.down, layer.down_bias)
        if layer.mlp_out_norm is not None:
            out = self._norm(out, layer.mlp_out_norm)
        return hidden + out


def describe(cfg: ModelConfig) -> str:
    params = cfg.vocab_size * cfg.hidden_size + cfg.num_layers * (
        cfg.hidden_size * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
        + cfg.num_heads * cfg.head_dim * cfg.hidden_size
        + 3 * cfg.hidden_size * cfg.intermediate_size
    )
    return f"{cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, ~{params / 1e6:.0f}M params"
