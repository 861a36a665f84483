"""The decoder forward on the C++ kernels: weights packed once at load, one library call per step.

Every operation of the forward has one fixed reduction order that depends on nothing but the row
itself (see server/kernels/csrc): a row's logits and KV entries are the same bits for any batch, any
row position, any prefill chunk or decode step, any thread count, and every x86 instruction set.
"""

from __future__ import annotations

import array
import collections
import ctypes
import functools
import math
from collections.abc import Sequence

import numpy as np
import torch

from seedstream.server.kernels import KERNEL_VERSION, KV_DTYPE_CODES, Kernels, ModelDesc, StepDesc
from seedstream.server.kernels.lib import LayerDesc
from seedstream.server.kernels.packing import (
    PRECISION,
    PackedMatrix,
    for_int8_activations,
    pack_f32,
    pack_from_float,
    pack_q4_1,
    pack_q8_0,
    split_gguf_q4_1,
    split_gguf_q8_0,
)
from seedstream.server.settings import WEIGHT_FORMATS  # "auto" and the formats, most precise first

from .gguf_tensors import StoredTensor
from .kv_cache import SequenceKVCache, kv_tag
from .model import ModelConfig, Segment

ATTN_BLOCK = 32  # keys per attention block, at absolute positions (part of engine_version)


def resolve_weight_format(requested: str, stored: dict[str, StoredTensor]) -> str:
    """'auto' is the file's own format (the most common among stored matrices), else f32."""
    if requested not in WEIGHT_FORMATS:
        raise ValueError(f"weights={requested!r}: allowed {', '.join(WEIGHT_FORMATS)}")
    if requested != "auto":
        return requested
    counts = collections.Counter(t.format for t in stored.values())
    return counts.most_common(1)[0][0] if counts else "f32"


def _pack_stored(parts: list[StoredTensor], bias: np.ndarray | None) -> PackedMatrix:
    fmt = parts[0].format
    rows = np.concatenate([p.rows for p in parts])
    if fmt == "f32":
        return pack_f32(rows.astype(np.float32), bias)
    if fmt == "q8_0":
        return pack_q8_0(*split_gguf_q8_0(rows), bias=bias)
    return pack_q4_1(*split_gguf_q4_1(rows), bias=bias)


class _Packer:
    """Builds each (fused) matrix from the stored blocks when they are precise enough, else from floats."""

    def __init__(self, fmt: str, state_dict: dict[str, torch.Tensor], stored: dict[str, StoredTensor]):
        self.fmt, self.sd, self.stored = fmt, state_dict, stored

    def __call__(self, names: list[str], bias_names: list[str] | None = None) -> PackedMatrix:
        bias = None
        if bias_names:
            bias = torch.cat([self.sd[n].float() for n in bias_names]).numpy()
        parts = [self.stored.get(n) for n in names]
        if (
            all(parts)
            and len({p.format for p in parts}) == 1
            and PRECISION.index(parts[0].format) <= PRECISION.index(self.fmt)
        ):
            return _pack_stored(parts, bias)
        w = torch.cat([self.sd[n].float() for n in names]).numpy()
        return pack_from_float(w, self.fmt, bias)


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    return _rope_tables(cfg.head_dim, cfg.rope_theta, cfg.max_context)


@functools.lru_cache(maxsize=4)
def _rope_tables(head_dim: int, theta: float, max_context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [max_context, D] in the rotate-half layout, from Python's float64 libm (the same on every
    CPU, unlike vectorised transcendental kernels), rounded once to float32. Read-only once built."""
    half = head_dim // 2
    inv_freq = [1.0 / (theta ** (2 * i / head_dim)) for i in range(half)]
    angles = np.array([[p * f for f in inv_freq] for p in range(max_context)], dtype=np.float64)
    cos = np.vectorize(math.cos)(angles) if angles.size else angles
    sin = np.vectorize(math.sin)(angles) if angles.size else angles
    cos, sin = np.concatenate([cos, cos], 1), np.concatenate([sin, sin], 1)
    return torch.from_numpy(cos.astype(np.float32)), torch.from_numpy(sin.astype(np.float32))


def pack_model_weights(
    cfg: ModelConfig, state_dict: dict[str, torch.Tensor], stored: dict[str, StoredTensor], fmt: str
) -> dict[str, PackedMatrix]:
    """Every matrix of the model packed as `fmt` (resolved, not 'auto'), q/k/v and gate/up fused."""
    pack = _Packer(fmt, state_dict, stored)
    out = {"embed": pack(["model.embed_tokens.weight"])}
    if not cfg.tie_word_embeddings:
        out["lm_head"] = pack(["lm_head.weight"])
    for i in range(cfg.num_layers):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        bias = [a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"] if cfg.attention_bias else None
        out[f"{i}.qkv"] = pack([a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"], bias)
        out[f"{i}.o"] = pack([a + "o_proj.weight"])
        out[f"{i}.gate_up"] = pack([m + "gate_proj.weight", m + "up_proj.weight"])
        out[f"{i}.down"] = pack([m + "down_proj.weight"])
    return out


# Speculation's price of one more row, as a fraction of a one-row decode step (sampling included):
# measured on the default model at 2 threads, one sequence of 128 tokens plus 1-8 rows (2-core AVX-512
# Xeon): float32 2 rows 1.33x, 4 rows 2.0x; int8 2 rows 1.21x, 4 rows 1.38x, 8 rows 1.76x.
DRAFT_ROW_COST = {"float32": 0.35, "int8": 0.15}


def _address(a: array.array[int]) -> int | None:
    """Where an array's items start (None for an empty one: the C side reads no item of it)."""
    return a.buffer_info()[0] if len(a) else None


class KernelModel:
    """Same interface as DecoderModel (forward, new_cache), on packed weights and the C++ kernels."""

    def __init__(
        self,
        cfg: ModelConfig,
        state_dict: dict[str, torch.Tensor],
        packed: dict[str, PackedMatrix],
        weight_format: str,
        kernels: Kernels,
        kv_dtype: torch.dtype = torch.float32,
        activations: str = "float32",
    ):
        if kv_dtype not in KV_DTYPE_CODES:
            raise ValueError(
                f"kv_cache_dtype={str(kv_dtype).removeprefix('torch.')}: the kernels cache float32 or bfloat16"
            )
        if activations == "int8":
            if weight_format not in ("q8_0", "q4_1"):
                raise ValueError(f"activations='int8' needs q8_0 or q4_1 weights; these are {weight_format}")
            packed = {name: for_int8_activations(m) for name, m in packed.items()}
        elif activations != "float32":
            raise ValueError(f"activations={activations!r}: allowed float32, int8")
        self.cfg, self.kernels, self.weight_format = cfg, kernels, weight_format
        self.activations = activations
        self.draft_row_cost = DRAFT_ROW_COST[activations]
        self.device, self.dtype, self.kv_dtype = torch.device("cpu"), torch.float32, kv_dtype
        self.embed = packed["embed"]
        self.lm_head = packed.get("lm_head", self.embed)
        keep: list = list(packed.values())  # everything the C structs point at stays alive here
        layers = (LayerDesc * cfg.num_layers)()
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            mats = [packed[f"{i}.{name}"] for name in ("qkv", "o", "gate_up", "down")]
            norms = [
                state_dict[p + "input_layernorm.weight"].float().contiguous(),
                state_dict[p + "post_attention_layernorm.weight"].float().contiguous(),
            ]
            keep += norms
            layers[i] = LayerDesc(*[x.desc() for x in mats], norms[0].data_ptr(), norms[1].data_ptr())
        self.norm_final = state_dict["model.norm.weight"].float().contiguous()
        self.cos, self.sin = rope_tables(cfg)
        self._keep = keep + [layers]
        self.desc = ModelDesc(
            cfg.num_layers,
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.vocab_size,
            cfg.max_context,
            cfg.rms_norm_eps,
            ATTN_BLOCK,
            self.cos.data_ptr(),
            self.sin.data_ptr(),
            self.embed.desc(),
            self.lm_head.desc(),
            self.norm_final.data_ptr(),
            layers,
        )
        self.weight_bytes = sum(x.nbytes for x in packed.values())

    @property
    def version_tag(self) -> str:
        """What determines this model's bits, for engine_version (not the instruction set: all agree)."""
        kv = kv_tag(self.kv_dtype, torch.float32)  # float32 keys and values: no tag (as before)
        act = ".a8" if self.activations == "int8" else ""  # float32 activations: no tag (as before)
        return f"ssk{KERNEL_VERSION}.{self.weight_format}{act}.attn{ATTN_BLOCK}{kv}"

    def new_cache(self) -> SequenceKVCache:
        c = self.cfg
        return SequenceKVCache(c.num_layers, c.num_kv_heads, c.head_dim, self.device, self.kv_dtype)

    def step_desc(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        segments: Sequence[Segment],
        logit_rows: torch.Tensor,
        logits: torch.Tensor,
    ) -> tuple[StepDesc, list]:
        """The C description of one step, and the buffers it points at (keep them alive for the call)."""
        for seg in segments:
            seg.cache.reserve(seg.start + seg.length)
        # int32 arrays through the array module: a few microseconds each, where torch conversions cost
        # tens (a one-stream step builds this every token)
        tok = array.array("i", token_ids.tolist())
        pos = array.array("i", positions.tolist())
        row_seg = array.array("i")
        for i, s in enumerate(segments):
            row_seg.extend(array.array("i", [i]) * s.length)
        keys = (ctypes.c_void_p * len(segments))(*[s.cache.keys.data_ptr() for s in segments])
        values = (ctypes.c_void_p * len(segments))(*[s.cache.values.data_ptr() for s in segments])
        caps = array.array("i", [s.cache.capacity for s in segments])
        rows = array.array("i", logit_rows.tolist())
        step = StepDesc(
            len(tok),
            len(segments),
            len(rows),
            KV_DTYPE_CODES[self.kv_dtype],
            _address(tok),
            _address(pos),
            _address(row_seg),
            ctypes.addressof(keys),
            ctypes.addressof(values),
            _address(caps),
            _address(rows),
            logits.data_ptr(),
        )
        return step, [tok, pos, row_seg, keys, values, caps, rows]

    @torch.inference_mode()
    def forward(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        segments: Sequence[Segment],
        logit_rows: torch.Tensor,
        decode_rows: int = 0,
    ) -> torch.Tensor:
        """Run packed rows (segments in row order). -> logits [R, V] float32 for `logit_rows`.
        decode_rows is accepted for interface parity: every row takes the same path here."""
        logits = torch.empty(logit_rows.shape[0], self.cfg.vocab_size, dtype=torch.float32)
        if token_ids.shape[0] == 0:
            return logits
        step, _alive = self.step_desc(token_ids, positions, segments, logit_rows, logits)
        self.kernels.forward(self.desc, step)
        for seg in segments:
            seg.cache.length = seg.start + seg.length
        return logits
