"""A batch-invariant decoder-only transformer (Llama family) over packed token rows.

Why our own forward pass: a sequence's logits must not depend on what else is
in the batch. On CPU, `F.linear` gives a row different bits when the row count
is small or the row sits in a partial micro-tile (see DESIGN.md §3), and
scaled-dot-product attention over a padded batch sums over a length that
depends on the other sequences. So:

* every GEMM runs on a row count padded to a multiple of ROW_TILE, which keeps
  each row in a full micro-tile whatever the batch (tests/engine prove it per
  shape and row count);
* attention runs per sequence, over exactly that sequence's keys, with a call
  whose shapes depend only on the sequence itself (its chunk and its length);
* everything else (embedding, RMSNorm, RoPE, SiLU) is row-wise.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .kv_cache import SequenceKVCache

ROW_TILE = 4  # row counts are padded to a multiple of this (see tests/engine/test_gemm_invariance.py)
COLUMN_BLOCK = 4  # decode rows go through weight @ x^T in blocks of this many rows


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_context: int
    attention_bias: bool = False
    tie_word_embeddings: bool = False

    @classmethod
    def from_hf(cls, cfg: dict) -> "ModelConfig":
        if cfg.get("model_type") not in ("llama", "mistral", "qwen2"):
            raise ValueError(f"unsupported model_type {cfg.get('model_type')!r}: llama, mistral, qwen2")
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"unsupported rope_type {rope.get('rope_type')!r}: only default RoPE")
        heads = cfg["num_attention_heads"]
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", cfg.get("rope_theta", 10000.0)),
            max_context=cfg.get("max_position_embeddings", 2048),
            attention_bias=cfg.get("attention_bias", cfg.get("model_type") == "qwen2"),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )


@dataclasses.dataclass
class Segment:
    """A run of consecutive tokens of one sequence inside a packed step."""

    cache: SequenceKVCache
    start: int  # position of the first token of this run in its sequence
    length: int  # number of tokens in the run


def invariant_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     tile: int = ROW_TILE) -> torch.Tensor:
    """`F.linear` whose row results do not depend on the row count. x: [M, K], M % tile == 0."""
    assert x.shape[0] % tile == 0, "pad rows with pad_rows() first"
    return F.linear(x, weight, bias)


def column_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  block: int = COLUMN_BLOCK) -> torch.Tensor:
    """`F.linear` for decode rows, as weight @ x^T in fixed blocks of `block` rows. x: [M, K] -> [M, N].

    With so few columns the GEMM streams the weight once without repacking it (about 4x faster than a
    padded `F.linear` at one row), and each block is its own call of one fixed shape, so a row's bits
    depend only on itself (tests/engine/test_gemm_invariance.py).
    """
    rows = x.shape[0]
    # Contiguous in and out: a kernel's summation order may follow the memory layout, and the
    # layout must not depend on what else was in the batch.
    xp = pad_rows(x, block).contiguous()
    out = torch.cat([torch.mm(weight, xp[i:i + block].t()) for i in range(0, xp.shape[0], block)], dim=1)
    out = out.t()[:rows].contiguous()  # [M, N]
    return out + bias if bias is not None else out


def pad_rows(x: torch.Tensor, tile: int = ROW_TILE) -> torch.Tensor:
    """Zero-pad dim 0 up to a multiple of `tile` (at least one tile)."""
    rows = x.shape[0]
    padded = max(tile, -(-rows // tile) * tile)
    if padded == rows:
        return x
    return torch.cat([x, x.new_zeros((padded - rows,) + tuple(x.shape[1:]))])


class Layer:
    """Weights of one decoder layer, with q/k/v and gate/up fused into single GEMMs."""

    def __init__(self, sd: dict[str, torch.Tensor], prefix: str, cfg: ModelConfig):
        a = prefix + "self_attn."
        self.qkv = torch.cat([sd[a + "q_proj.weight"], sd[a + "k_proj.weight"], sd[a + "v_proj.weight"]])
        self.qkv_bias = None
        if cfg.attention_bias:
            self.qkv_bias = torch.cat([sd[a + "q_proj.bias"], sd[a + "k_proj.bias"], sd[a + "v_proj.bias"]])
        self.o = sd[a + "o_proj.weight"]
        m = prefix + "mlp."
        self.gate_up = torch.cat([sd[m + "gate_proj.weight"], sd[m + "up_proj.weight"]])
        self.down = sd[m + "down_proj.weight"]
        self.norm_in = sd[prefix + "input_layernorm.weight"]
        self.norm_post = sd[prefix + "post_attention_layernorm.weight"]


class DecoderModel:
    """Llama-family forward over packed rows of many sequences, each with its own KV cache."""

    def __init__(self, cfg: ModelConfig, state_dict: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype,
                 row_tile: int = ROW_TILE, decode_gemm: str = "column"):
        # row_tile=1 turns padding off: faster at tiny batches, NOT batch-invariant (benchmarks only).
        self.cfg, self.device, self.dtype, self.row_tile = cfg, device, dtype, row_tile
        self.column_decode = decode_gemm == "column"  # else decode rows take the padded-row path too
        sd = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
        self.embed = sd["model.embed_tokens.weight"]  # [V, H]
        self.lm_head = self.embed if cfg.tie_word_embeddings else sd["lm_head.weight"]  # [V, H]
        self.norm_final = sd["model.norm.weight"]
        self.layers = [Layer(sd, f"model.layers.{i}.", cfg) for i in range(cfg.num_layers)]
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim))
        angles = torch.outer(torch.arange(cfg.max_context, dtype=torch.float64), inv_freq)  # [P, D/2]
        angles = torch.cat([angles, angles], dim=-1)  # [P, D]
        self.cos = angles.cos().to(device=device, dtype=dtype)
        self.sin = angles.sin().to(device=device, dtype=dtype)

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                decode_rows: int = 0) -> torch.Tensor:
        """x: [T, K] -> [T, N]. The first `decode_rows` rows (one token of a decoding sequence each) take
        the column path, the rest the padded-row path: which path a row takes depends only on its own
        sequence's state, never on the batch."""
        if self.row_tile == 1:  # benchmark baseline: plain F.linear, not invariant
            return F.linear(x, weight, bias)
        t = x.shape[0]
        decode_rows = decode_rows if self.column_decode else 0
        parts = []
        if decode_rows:
            parts.append(column_linear(x[:decode_rows], weight, bias))
        if t > decode_rows:
            parts.append(invariant_linear(pad_rows(x[decode_rows:], self.row_tile), weight, bias, self.row_tile)[: t - decode_rows])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def new_cache(self) -> SequenceKVCache:
        c = self.cfg
        return SequenceKVCache(c.num_layers, c.num_kv_heads, c.head_dim, self.device, self.dtype)

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps)
        return weight * xf.to(x.dtype)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x: [T, heads, D]; cos/sin: [T, 1, D]
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, segments: Sequence[Segment]) -> torch.Tensor:
        """Per-sequence attention. q: [T, Hq, D], k/v: [T, Hkv, D] -> [T, Hq*D]."""
        out = q.new_zeros(q.shape[0], q.shape[1] * q.shape[2])
        row = 0
        for seg in segments:
            n = seg.length
            keys, values = seg.cache.write(layer, seg.start, k[row:row + n], v[row:row + n])  # [Hkv, L, D]
            total = seg.start + n
            mask = None
            if n > 1 and seg.start > 0:  # chunk after earlier context: causal, offset by start
                pos_q = torch.arange(seg.start, total, device=q.device)[:, None]
                mask = torch.arange(total, device=q.device)[None, :] <= pos_q  # [n, L]
            attn = F.scaled_dot_product_attention(
                q[row:row + n].transpose(0, 1).unsqueeze(0),  # [1, Hq, n, D]
                keys.unsqueeze(0),
                values.unsqueeze(0),
                attn_mask=mask,
                is_causal=(n > 1 and seg.start == 0),
                enable_gqa=True,
            )  # [1, Hq, n, D]
            out[row:row + n] = attn[0].transpose(0, 1).reshape(n, -1)
            row += n
        return out

    @torch.inference_mode()
    def forward(self, token_ids: torch.Tensor, positions: torch.Tensor, segments: Sequence[Segment],
                logit_rows: torch.Tensor, decode_rows: int = 0) -> torch.Tensor:
        """Run packed rows. token_ids/positions: [T]; logit_rows: [R] row indices, ascending -> logits [R, V]
        float32. The first `decode_rows` rows are single decode tokens (see _linear)."""
        c = self.cfg
        t = token_ids.shape[0]
        d = decode_rows
        hidden = F.embedding(token_ids, self.embed)  # [T, H]
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)  # [T, 1, D]
        q_width, kv_width = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        for i, layer in enumerate(self.layers):
            x = self._rms_norm(hidden, layer.norm_in)
            qkv = self._linear(x, layer.qkv, layer.qkv_bias, d)  # [T, Hq*D + 2*Hkv*D]
            q = self._rope(qkv[:, :q_width].view(t, c.num_heads, c.head_dim), cos, sin)
            k = self._rope(qkv[:, q_width:q_width + kv_width].view(t, c.num_kv_heads, c.head_dim), cos, sin)
            v = qkv[:, q_width + kv_width:].view(t, c.num_kv_heads, c.head_dim)
            attn = self._attention(q, k, v, i, segments)  # [T, Hq*D]
            hidden = hidden + self._linear(attn, layer.o, None, d)
            x = self._rms_norm(hidden, layer.norm_post)
            gate, up = self._linear(x, layer.gate_up, None, d).chunk(2, dim=-1)
            hidden = hidden + self._linear(F.silu(gate) * up, layer.down, None, d)
        if logit_rows.numel() == 0:
            return hidden.new_zeros((0, c.vocab_size), dtype=torch.float32)
        last = self._rms_norm(hidden[logit_rows], self.norm_final)  # [R, H]
        return self._linear(last, self.lm_head, None, int((logit_rows < d).sum())).float()  # [R, V]


def describe(cfg: ModelConfig) -> str:
    params = cfg.vocab_size * cfg.hidden_size + cfg.num_layers * (
        cfg.hidden_size * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
        + cfg.num_heads * cfg.head_dim * cfg.hidden_size + 3 * cfg.hidden_size * cfg.intermediate_size
    )
    return f"{cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, ~{params / 1e6:.0f}M params"


