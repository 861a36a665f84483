"""The decoder forward on the C++ kernels: weights packed once at load, one library call per step.

Every operation of the forward has one fixed reduction order that depends on nothing but the row
itself (see server/kernels/csrc): a row's logits and KV entries are the same bits for any batch, any
row position, any prefill chunk or decode step, any thread count, and every x86 instruction set.
"""

from __future__ import annotations

import array
import ctypes
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from seedstream.server.kernels import KERNEL_VERSION, KV_DTYPE_CODES, Kernels, Matrix, ModelDesc, StepDesc
from seedstream.server.kernels.lib import ACTIVATION_FN_CODES, NR, LayerDesc, RopeDesc
from seedstream.server.kernels.packing import (
    BITS,
    INT8_FORMATS,
    PRECISION,
    STORED_FORMATS,
    PackedMatrix,
    for_int8_activations,
    pack_from_float,
    pack_stored,
)
from seedstream.server.settings import WEIGHT_FORMATS  # "auto" and the formats, most precise first

from . import arch
from .arch import ModelConfig, RopeSpec
from .gguf_tensors import StoredTensor
from .kv_cache import SequenceKVCache, kv_tag
from .model import Segment

ATTN_BLOCK = 32  # keys per attention block, at absolute positions (part of engine_version)
TANH_VERSION = 1  # of simd.h's v_tanh: bump when its arithmetic changes (engine_version of models that use it)


# The token embedding and the output head: llama.cpp's file types (Q4_1, Q4_K_M, ...) leave their type free,
# so the name of a file's mix leaves them out too (they are packed as stored all the same).
_EMBEDDING_NAMES = ("model.embed_tokens.weight", "lm_head.weight")


def resolve_weight_format(requested: str, stored: dict[str, StoredTensor]) -> str:
    """'auto' is "as stored": the sorted set of the stored types of the layers' matrices ("q4_1" for the
    default file, "q4_k,q6_k" for a Q4_K_M one; the embedding's and head's own type if there is no other;
    "f32" with nothing stored). Anything else is a conversion, asked for by name. A stored type the kernels
    cannot multiply in (IQ types, ...) is refused, naming the ones they can."""
    if requested not in WEIGHT_FORMATS:
        raise ValueError(f"weights={requested!r}: allowed {', '.join(WEIGHT_FORMATS)}")
    unknown = sorted({t.format for t in stored.values()} - set(STORED_FORMATS))
    if unknown:
        raise ValueError(
            f"weight type {', '.join(unknown)}: the kernels take {', '.join(STORED_FORMATS)} (or --backend torch)"
        )
    if requested != "auto":
        return requested
    layers = {t.format for n, t in stored.items() if n not in _EMBEDDING_NAMES}
    return ",".join(sorted(layers or {t.format for t in stored.values()})) or "f32"


def packed_format_name(requested: str, resolved: str, packed: dict[str, PackedMatrix]) -> str:
    """The weight_format a packing reports. 'auto' is its resolved stored mix. A named conversion keeps the
    stored blocks that are at least as precise, so it names what the layers' matrices really are: the
    format asked for when every one of them is in it, else their sorted mix ("f16" for an F16 file asked
    for q8_0, whose blocks stay as stored: the same bits under the same name as 'auto')."""
    if requested == "auto":
        return resolved
    formats: set[str] = set()
    for name, head in packed.items():
        if name in ("embed", "lm_head"):
            continue
        part: PackedMatrix | None = head
        while part is not None:
            formats.add(part.format)
            part = part.next
    return requested if formats <= {requested} else ",".join(sorted(formats))


def _pad_rows(rows: np.ndarray) -> np.ndarray:
    """rows [N, ...] with zero rows appended up to a multiple of NR (a zero row is a zero block in every
    format: scale, minimum and quants 0)."""
    pad = -rows.shape[0] % NR
    return np.concatenate([rows, np.zeros((pad, *rows.shape[1:]), rows.dtype)]) if pad else rows


def _pack_stored(parts: list[StoredTensor], bias: np.ndarray | None, pad: bool) -> PackedMatrix:
    """Stacked parts packed as stored: runs of one format are one matrix, a change of format starts the
    next part of a chain (each multiplied in its own format); the bias is split along."""
    runs: list[list[StoredTensor]] = []
    for p in parts:
        if runs and runs[-1][0].format == p.format:
            runs[-1].append(p)
        else:
            runs.append([p])
    head, prev, row0 = None, None, 0
    for run in runs:
        rows = np.concatenate([p.rows for p in run])
        rows = _pad_rows(rows) if pad else rows
        n = rows.shape[0]
        if n % NR:
            raise ValueError(f"a {run[0].format} part of {n} rows: the parts of a chain must be multiples of {NR}")
        m = pack_stored(run[0].format, rows, None if bias is None else bias[row0 : row0 + n])
        row0 += n
        if prev is None:
            head = m
        else:
            prev.next = m
        prev = m
    if head is None:
        raise ValueError("no matrix to pack")
    return head


class _Packer:
    """Builds each (fused) matrix from the stored blocks when they are precise enough, else from floats."""

    def __init__(self, fmt: str, state_dict: Mapping[str, torch.Tensor], stored: dict[str, StoredTensor]) -> None:
        self.fmt, self.sd, self.stored = fmt, state_dict, stored
        # "as stored" (a resolved 'auto' naming stored types); else a conversion keeps what is as precise
        self.as_stored = fmt not in PRECISION

    def keeps(self, part: StoredTensor | None) -> bool:
        if part is None or part.format not in BITS:
            return False
        return self.as_stored or BITS[part.format] >= BITS[self.fmt]

    def __call__(self, names: list[str], bias_names: list[str] | None = None, pad: bool = False) -> PackedMatrix:
        """names' matrices stacked (and their biases); pad: rows up to a multiple of NR (the vocabulary)."""
        bias = None
        if bias_names:
            bias = torch.cat([self.sd[n].float() for n in bias_names]).numpy()
        parts = [self.stored.get(n) for n in names]
        kept = [p for p in parts if p is not None and self.keeps(p)]
        if len(kept) == len(parts):
            return _pack_stored(kept, bias, pad)
        w = torch.cat([self.sd[n].float() for n in names]).numpy()
        return pack_from_float(_pad_rows(w) if pad else w, self.fmt if self.fmt in PRECISION else "f32", bias)


# Rope-table rows built at start; a step reaching past them grows the tables (doubling, up to the context).
# Each row is computed on its own, so a grown table holds the same bits; a model with a 131072-token context
# would otherwise hold 64 MiB of tables (head_dim 64) and spend seconds of Python math on them at start.
# 2048 rows are 1 MiB at head_dim 64 (8192 held 4 MiB while most requests stay far below); growing to 8192
# costs about 40 ms of the step that first reaches past 4096.
ROPE_ROWS_AT_START = 2048


_rope_cache: dict[RopeSpec, tuple[torch.Tensor, torch.Tensor]] = {}  # the longest tables built per spec


def rope_tables(spec: RopeSpec, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [rows, rotary_dim] float32 of arch.rope_tables (the same on every CPU). Read-only: models
    share them (the first rows of a longer table, or a longer table built from a shorter one's rows)."""
    have = _rope_cache.get(spec)
    start = 0 if have is None else len(have[0])
    if have is None or start < rows:
        cos, sin = (torch.from_numpy(t) for t in arch.rope_tables(spec, rows, start=start))
        if have is not None:
            cos, sin = torch.cat([have[0], cos]), torch.cat([have[1], sin])
        have = _rope_cache[spec] = cos, sin
    return have[0][:rows], have[1][:rows]


def pack_model_weights(
    cfg: ModelConfig, state_dict: Mapping[str, torch.Tensor], stored: dict[str, StoredTensor], fmt: str
) -> dict[str, PackedMatrix]:
    """Every matrix of the model packed as `fmt` (resolved, not 'auto'), q/k/v and gate/up fused, with their
    biases; the embedding and lm_head rows padded with zero rows to a multiple of NR."""
    pack = _Packer(fmt, state_dict, stored)
    out = {"embed": pack(["model.embed_tokens.weight"], pad=True)}
    if not cfg.tie_word_embeddings:
        out["lm_head"] = pack(["lm_head.weight"], pad=True)
    for i in range(cfg.num_layers):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        qkv_bias = [a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"] if cfg.attention_bias else None
        out[f"{i}.qkv"] = pack([a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"], qkv_bias)
        out[f"{i}.o"] = pack([a + "o_proj.weight"], [a + "o_proj.bias"] if cfg.attention_out_bias else None)
        gate_up_bias = [m + "gate_proj.bias", m + "up_proj.bias"] if cfg.mlp_bias else None
        out[f"{i}.gate_up"] = pack([m + "gate_proj.weight", m + "up_proj.weight"], gate_up_bias)
        out[f"{i}.down"] = pack([m + "down_proj.weight"], [m + "down_proj.bias"] if cfg.mlp_bias else None)
    return out


# Speculation's price of one more row, as a fraction of a one-row decode step (sampling included):
# measured on the default model at 2 threads, one sequence of 128 tokens plus 1-8 rows (2-core AVX-512
# Xeon): float32 2 rows 1.33x, 4 rows 2.0x; int8 2 rows 1.21x, 4 rows 1.38x, 8 rows 1.76x.
DRAFT_ROW_COST = {"float32": 0.35, "int8": 0.15}


def _address(a: array.array[int]) -> int | None:
    """Where an array's items start (None for an empty one: the C side reads no item of it)."""
    return a.buffer_info()[0] if len(a) else None


def _layer_desc(
    cfg: ModelConfig, i: int, sd: Mapping[str, torch.Tensor], packed: dict[str, PackedMatrix], keep: list[object]
) -> LayerDesc:
    """Layer i's C description; the norm vectors it points at are appended to keep."""
    p = f"model.layers.{i}."

    def vec(name: str, present: bool = True) -> int | None:
        if not present:
            return None
        t = sd[p + name].float().contiguous()
        keep.append(t)
        return t.data_ptr()

    mats = [packed[f"{i}.{name}"].desc() for name in ("qkv", "o", "gate_up", "down")]
    qk, sandwich = cfg.qk_norm, cfg.sandwich_norms
    return LayerDesc(
        *mats,
        vec("input_layernorm.weight"),
        vec("post_attention_layernorm.weight"),
        vec("self_attn.q_norm.weight", qk),
        vec("self_attn.k_norm.weight", qk),
        vec("attn_output_norm.weight", sandwich),
        vec("mlp_output_norm.weight", sandwich),
        cfg.layers[i].window,
        cfg.layers[i].rope,
    )


def _model_desc(
    cfg: ModelConfig,
    layers: ctypes.Array[LayerDesc],
    ropes: ctypes.Array[RopeDesc],
    embed: Matrix | None = None,
    lm_head: Matrix | None = None,
    norm_final: int | None = None,  # the final norm's data pointer
    rope_rows: int | None = None,  # rows in the rope tables (default: the whole context)
) -> ModelDesc:
    """The C description of cfg; without matrices (null) it serves ssk_check_model's shape check."""
    return ModelDesc(
        cfg.num_layers,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.vocab_size,
        cfg.max_context if rope_rows is None else rope_rows,
        cfg.rms_norm_eps,
        ATTN_BLOCK,
        cfg.scale,
        cfg.attn_softcap,
        cfg.final_softcap,
        cfg.embed_scale,
        ACTIVATION_FN_CODES[cfg.activation],
        len(cfg.ropes),
        ropes,
        embed or Matrix(),
        lm_head or Matrix(),
        norm_final,
        layers,
    )


def _rope_descs(cfg: ModelConfig, keep: list[object], rows: int = 0) -> ctypes.Array[RopeDesc]:
    """Each rope's C description with tables of `rows` rows (0: null tables, for the shape check)."""
    ropes = (RopeDesc * max(1, len(cfg.ropes)))()
    for i, spec in enumerate(cfg.ropes):
        cos, sin = rope_tables(spec, rows) if rows else (None, None)
        keep += [cos, sin]
        ropes[i] = RopeDesc(_ptr(cos), _ptr(sin), spec.rotary_dim)
    return ropes


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def kernel_shape_problem(cfg: ModelConfig, kernels: Kernels) -> str | None:
    """Why the kernels cannot serve cfg's shapes or options (ssk_forward's own check), or None: asked before
    any weight is packed."""
    keep: list[object] = []
    layers = (LayerDesc * cfg.num_layers)()
    for i, spec in enumerate(cfg.layers):
        layers[i].window, layers[i].rope = spec.window, spec.rope
    return kernels.check_model(_model_desc(cfg, layers, _rope_descs(cfg, keep)), with_weights=False)


class KernelModel:
    """A ForwardModel (forward.py), as DecoderModel is, on packed weights and the C++ kernels."""

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
        """state_dict: canonical names (arch.canonical_state_dict). ValueError when the kernels cannot serve
        this model (the message says which dimension or option)."""
        if kv_dtype not in KV_DTYPE_CODES:
            raise ValueError(
                f"kv_cache_dtype={str(kv_dtype).removeprefix('torch.')}: the kernels cache float32 or bfloat16"
            )
        if activations == "int8":
            formats = sorted({f for m in packed.values() for f in m.formats} - set(INT8_FORMATS))
            if formats:
                raise ValueError(
                    f"activations='int8' needs weights in {', '.join(sorted(INT8_FORMATS))}; "
                    f"these include {', '.join(formats)}"
                )
            packed = {name: for_int8_activations(m) for name, m in packed.items()}
        elif activations != "float32":
            raise ValueError(f"activations={activations!r}: allowed float32, int8")
        self.cfg, self.kernels, self.weight_format = cfg, kernels, weight_format
        # the kernels' own tanh (simd.h v_tanh) computes these: its version is part of their engine_version
        self.uses_tanh = bool(cfg.activation == "gelu_tanh" or cfg.attn_softcap or cfg.final_softcap)
        self.activations = activations
        self.draft_row_cost = DRAFT_ROW_COST[activations]
        self.device, self.dtype, self.kv_dtype = torch.device("cpu"), torch.float32, kv_dtype
        self.embed = packed["embed"]
        self.lm_head = packed.get("lm_head", self.embed)
        keep: list[object] = list(packed.values())  # everything the C structs point at stays alive here
        layers = (LayerDesc * cfg.num_layers)()
        for i in range(cfg.num_layers):
            layers[i] = _layer_desc(cfg, i, state_dict, packed, keep)
        self.norm_final = state_dict["model.norm.weight"].float().contiguous()
        self._keep, self._layers = keep, layers
        self.rope_rows = min(cfg.max_context, ROPE_ROWS_AT_START)
        self.desc = self._describe()
        problem = kernels.check_model(self.desc)
        if problem:
            raise ValueError(f"the C++ kernels cannot serve this model: {problem}")
        self.weight_bytes = sum(x.nbytes for x in packed.values())

    def _describe(self) -> ModelDesc:
        """The C description, with rope tables of self.rope_rows rows (kept alive with it)."""
        self._rope_keep: list[object] = []
        ropes = _rope_descs(self.cfg, self._rope_keep, self.rope_rows)
        self._rope_keep.append(ropes)
        embed, lm_head, norm = self.embed.desc(), self.lm_head.desc(), self.norm_final.data_ptr()
        return _model_desc(self.cfg, self._layers, ropes, embed, lm_head, norm, self.rope_rows)

    def _reach(self, end: int) -> None:
        """Grow the rope tables to cover positions below `end` (at most the context: the engine refuses more)."""
        if end > self.rope_rows:
            self.rope_rows = min(self.cfg.max_context, max(end, 2 * self.rope_rows))
            self.desc = self._describe()

    @property
    def version_tag(self) -> str:
        """What determines this model's bits, for engine_version (not the instruction set: all agree)."""
        kv = kv_tag(self.kv_dtype, torch.float32)  # float32 keys and values: no tag (as before)
        act = ".a8" if self.activations == "int8" else ""  # float32 activations: no tag (as before)
        tanh = f".tanh{TANH_VERSION}" if self.uses_tanh else ""  # only models with GELU-tanh or soft caps
        return f"ssk{KERNEL_VERSION}.{self.weight_format}{act}.attn{ATTN_BLOCK}{kv}{tanh}"

    def new_cache(self) -> SequenceKVCache:
        c = self.cfg
        return SequenceKVCache(c.num_layers, c.num_kv_heads, c.head_dim, self.device, self.kv_dtype)

    def release_scratch(self) -> None:
        """The kernels' scratch, sized by the largest step so far (rows x about 131 KB on a 1B model), is freed."""
        self.kernels.release_scratch()

    def step_desc(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        segments: Sequence[Segment],
        logit_rows: torch.Tensor,
        logits: torch.Tensor,
    ) -> tuple[StepDesc, list[object]]:
        """The C description of one step, and the buffers it points at (keep them alive for the call)."""
        end = 0  # the positions this step reaches
        for seg in segments:
            seg.cache.reserve(seg.start + seg.length)
            end = max(end, seg.start + seg.length)
        self._reach(end)
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
    ) -> torch.Tensor:
        """Run packed rows (segments in row order). -> logits [R, V] float32 for `logit_rows`."""
        vocab, padded = self.cfg.vocab_size, self.lm_head.n  # the lm_head's rows padded to a multiple of NR
        logits = torch.empty(logit_rows.shape[0], padded, dtype=torch.float32)
        if token_ids.shape[0] == 0:
            return logits[:, :vocab].contiguous()
        step, _alive = self.step_desc(token_ids, positions, segments, logit_rows, logits)
        self.kernels.forward(self.desc, step)
        for seg in segments:
            seg.cache.length = seg.start + seg.length
        return logits if padded == vocab else logits[:, :vocab].contiguous()
