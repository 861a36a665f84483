"""What a model's config means for the forward pass: the supported architectures, read into one ModelConfig.

Every architecture served is a pre-norm decoder with RMSNorm, rotary positions, grouped-query attention and
a gated MLP; the families differ only in options that are arithmetic inside a row (a bias, a norm, a soft
cap, a window, a skipped RoPE, a scaled embedding). Both forward paths (server/engine/model.py on torch,
server/engine/kernel_model.py on the C++ kernels) read these options from ModelConfig and nothing else, and
read the weights under the canonical names that canonical_state_dict() gives them.

from_hf() is called on the transformers-standardised config dict *before* any conversion, so an unsupported
model is refused before work starts, with a message naming what is unsupported and what is.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch

# A transformers config dict (AutoConfig(...).to_dict()), or one of its rope parameter dicts: JSON values.
HFConfig = dict[str, Any]

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "smollm3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
_GEMMA = ("gemma", "gemma2", "gemma3_text")
_SANDWICH = ("gemma2", "gemma3_text")  # norms on the attention and MLP outputs too
_QK_NORM = ("qwen3", "gemma3_text")
_LAYER_TYPED = ("qwen2", "qwen3", "smollm3", "gemma2", "gemma3_text")  # windows per layer, from layer_types
_ALL_LAYERS_WINDOWED = ("mistral", "phi3")  # a sliding_window applies to every layer


class UnsupportedModel(ValueError):
    """The config asks for an architecture or an option that the forward passes do not implement."""


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    """Rotary embedding of one kind of layer: angle(p, i) = p * inv_freq[i]; cos/sin are scaled by
    attention_scaling (yarn, longrope); the first rotary_dim of each head rotate (rotate-half layout)."""

    inv_freq: tuple[float, ...]  # [rotary_dim / 2], float64
    attention_scaling: float
    rotary_dim: int


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    window: int  # 0: full causal attention; W: a query at p sees keys p-W+1 .. p
    rope: int  # index into ModelConfig.ropes, or -1 for a layer without RoPE (SmolLM3's NoPE layers)


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
    max_context: int
    rope_theta: float = 10000.0  # of the first rope; kept for descriptions
    attention_bias: bool = False  # q/k/v biases
    attention_out_bias: bool = False  # o_proj bias
    mlp_bias: bool = False  # gate/up/down biases
    tie_word_embeddings: bool = False
    model_type: str = "llama"
    qk_norm: bool = False  # RMSNorm of each query and key head before RoPE (Qwen3, Gemma 3)
    sandwich_norms: bool = False  # RMSNorm of the attention and MLP outputs before their residual add (Gemma 2/3)
    embed_scale: float = 1.0  # the embedding row times this (Gemma: float32(sqrt(hidden)))
    activation: str = "silu"  # of the gate: "silu" or "gelu_tanh"
    attn_scale: float = 0.0  # scores = q.k * attn_scale; 0 means 1 / sqrt(head_dim)
    attn_softcap: float = 0.0  # scores -> cap * tanh(scores / cap); 0: none
    final_softcap: float = 0.0  # logits -> cap * tanh(logits / cap); 0: none
    ropes: tuple[RopeSpec, ...] = ()
    layers: tuple[LayerSpec, ...] = ()

    def __post_init__(self) -> None:
        if not self.ropes:  # a config built by hand (tests): default RoPE on every layer
            rope = default_rope(self.rope_theta, self.head_dim)
            object.__setattr__(self, "ropes", (rope,))
        if not self.layers:
            object.__setattr__(self, "layers", tuple(LayerSpec(0, 0) for _ in range(self.num_layers)))

    @property
    def scale(self) -> float:
        return self.attn_scale or 1.0 / math.sqrt(self.head_dim)

    @classmethod
    def from_hf(cls, cfg: HFConfig) -> ModelConfig:
        return read_config(cfg)


def default_rope(theta: float, dim: int, rotary_dim: int | None = None) -> RopeSpec:
    rot = rotary_dim or dim
    return RopeSpec(tuple(1.0 / (theta ** (i / rot)) for i in range(0, rot, 2)), 1.0, rot)


def _unsupported(what: str, allowed: Iterable[str]) -> UnsupportedModel:
    return UnsupportedModel(f"unsupported {what}; supported: {', '.join(allowed)}")


def read_config(cfg: HFConfig) -> ModelConfig:
    """ModelConfig of a transformers config dict (AutoConfig(...).to_dict()), or UnsupportedModel."""
    mt = cfg.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise _unsupported(f"model_type {mt!r}", SUPPORTED_MODEL_TYPES)
    if cfg.get("use_bidirectional_attention"):
        raise UnsupportedModel(f"{mt}: use_bidirectional_attention is not supported (causal decoding only)")
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    act_name = cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu"
    if act_name not in ACTIVATIONS:
        raise _unsupported(f"{mt} activation {act_name!r}", ACTIVATIONS)
    kinds, windows = _layer_kinds(cfg, mt)
    ropes, rope_index, max_context = _ropes(cfg, mt, head_dim, kinds)
    nope = cfg.get("no_rope_layers") if mt == "smollm3" else None
    layers = tuple(
        LayerSpec(windows[i], -1 if nope is not None and not nope[i] else rope_index[kinds[i]])
        for i in range(cfg["num_hidden_layers"])
    )
    attention_bias = bool(cfg.get("attention_bias", False))
    gemma = mt in _GEMMA
    return ModelConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        max_context=max_context,
        rope_theta=_rope_params(cfg, kinds[0]).get("rope_theta", 10000.0),
        attention_bias=attention_bias or mt == "qwen2",
        attention_out_bias=attention_bias and mt != "qwen2",
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        model_type=mt,
        qk_norm=mt in _QK_NORM,
        sandwich_norms=mt in _SANDWICH,
        embed_scale=_float32(cfg["hidden_size"] ** 0.5) if gemma else 1.0,
        activation=ACTIVATIONS[act_name],
        attn_scale=cfg["query_pre_attn_scalar"] ** -0.5 if mt in _SANDWICH else 0.0,
        attn_softcap=float(cfg.get("attn_logit_softcapping") or 0.0) if mt in _SANDWICH else 0.0,
        final_softcap=float(cfg.get("final_logit_softcapping") or 0.0) if mt in _SANDWICH else 0.0,
        ropes=ropes,
        layers=layers,
    )


def _float32(x: float) -> float:
    value: float = struct.unpack("<f", struct.pack("<f", x))[0]
    return value


def _layer_kinds(cfg: HFConfig, mt: str) -> tuple[list[str], list[int]]:
    """Each layer's kind ("full_attention" / "sliding_attention") and its window (0: none)."""
    n = cfg["num_hidden_layers"]
    window = cfg.get("sliding_window") or 0
    if mt in ("qwen2", "qwen3", "smollm3") and not cfg.get("use_sliding_window", False):
        window = 0
    if mt in _LAYER_TYPED and cfg.get("layer_types"):
        kinds = list(cfg["layer_types"])
    elif mt in _ALL_LAYERS_WINDOWED and window:
        kinds = ["sliding_attention"] * n
    else:
        kinds = ["full_attention"] * n
    allowed = ("full_attention", "sliding_attention")
    for kind in kinds:
        if kind not in allowed:
            raise _unsupported(f"{mt} layer type {kind!r}", allowed)
    if len(kinds) != n:
        raise UnsupportedModel(f"{mt}: layer_types has {len(kinds)} entries for {n} layers")
    return kinds, [window if k == "sliding_attention" else 0 for k in kinds]


def _rope_params(cfg: HFConfig, kind: str) -> HFConfig:
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if kind in params and isinstance(params[kind], dict):  # nested by layer type (Gemma 3)
        params = params[kind]
    params = dict(params)
    params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    if cfg.get("partial_rotary_factor") is not None:
        params.setdefault("partial_rotary_factor", cfg["partial_rotary_factor"])
    return params


def _ropes(cfg: HFConfig, mt: str, head_dim: int, kinds: list[str]) -> tuple[tuple[RopeSpec, ...], dict[str, int], int]:
    """The distinct RopeSpecs, each layer kind's index among them, and the context they serve."""
    specs: list[RopeSpec] = []
    index: dict[str, int] = {}
    max_context = int(cfg.get("max_position_embeddings", 2048))
    for kind in dict.fromkeys(kinds):
        spec, limit = rope_spec(_rope_params(cfg, kind), cfg, mt, head_dim)
        max_context = min(max_context, limit)
        if spec not in specs:
            specs.append(spec)
        index[kind] = specs.index(spec)
    return tuple(specs), index, max_context


def rope_spec(p: HFConfig, cfg: HFConfig, mt: str, head_dim: int) -> tuple[RopeSpec, int]:
    """One RopeSpec from standardised rope parameters, and the most positions it serves exactly as
    transformers does (float64 arithmetic, the formulas of transformers' modeling_rope_utils)."""
    kind = p.get("rope_type", p.get("type", "default"))
    if kind not in SUPPORTED_ROPE_TYPES:
        raise _unsupported(f"{mt} rope_type {kind!r}", SUPPORTED_ROPE_TYPES)
    base = float(p["rope_theta"])
    rot = int(head_dim * float(p.get("partial_rotary_factor", 1.0) or 1.0))
    if rot % 2 or rot < 2:
        raise UnsupportedModel(f"{mt}: partial_rotary_factor gives {rot} rotary dims; need an even number >= 2")
    exps = [i / rot for i in range(0, rot, 2)]
    inv = [1.0 / base**e for e in exps]
    limit = int(cfg.get("max_position_embeddings", 2048))
    scaling = 1.0
    if kind == "linear":
        inv = [f / float(p["factor"]) for f in inv]
    elif kind == "dynamic":
        pass  # equal to default up to max_position_embeddings, where transformers starts to rescale
    elif kind == "llama3":
        inv = _llama3(inv, p)
    elif kind == "yarn":
        inv, scaling = _yarn(exps, base, rot, p, cfg)
    elif kind == "longrope":
        orig = int(cfg.get("original_max_position_embeddings") or p["original_max_position_embeddings"])
        short = [float(x) for x in p["short_factor"]]
        if len(short) != len(exps):
            raise UnsupportedModel(f"{mt}: longrope short_factor has {len(short)} entries, expected {len(exps)}")
        inv = [1.0 / (s * base**e) for s, e in zip(short, exps)]
        factor = p.get("factor") or cfg["max_position_embeddings"] / orig
        scaling = p.get("attention_factor") or (
            1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
        )
        # transformers switches every position to long_factor once a sequence passes `orig`, which
        # would change the keys already cached: served up to `orig` positions, with the short factors.
        limit = min(limit, orig)
    return RopeSpec(tuple(inv), float(scaling), rot), limit


def _llama3(inv: list[float], p: HFConfig) -> list[float]:
    factor, low, high = float(p["factor"]), float(p["low_freq_factor"]), float(p["high_freq_factor"])
    old = float(p["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for f in inv:
        wavelen = 2 * math.pi / f
        g = f / factor if wavelen > low_wavelen else f
        if high_wavelen <= wavelen <= low_wavelen:
            smooth = (old / wavelen - low) / (high - low)
            g = (1 - smooth) * g / factor + smooth * g
        out.append(g)
    return out


def _yarn(exps: list[float], base: float, dim: int, p: HFConfig, cfg: HFConfig) -> tuple[list[float], float]:
    orig = float(p["original_max_position_embeddings"])
    factor = p.get("factor") or cfg["max_position_embeddings"] / orig

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = p.get("attention_factor")
    if attention is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
        else:
            attention = mscale(factor)
    fast, slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(fast), correction_dim(slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    out = []
    for i, e in enumerate(exps):
        pos = base**e
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        extrapolation = 1 - ramp
        out.append((1.0 / (factor * pos)) * (1 - extrapolation) + (1.0 / pos) * extrapolation)
    return out, float(attention)


def canonical_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights under the names both forward paths read, with every option folded in:

    - fused q/k/v (``qkv_proj``) and gate/up (``gate_up_proj``) split into the Llama names (Phi-3);
    - Gemma's norms, stored as w and applied as (1 + w) in float32, stored as 1 + w;
    - Gemma 2/3's four norms as ``input_layernorm`` (before attention), ``post_attention_layernorm``
      (before the MLP, the Llama meaning), ``attn_output_norm`` and ``mlp_output_norm``.

    Every tensor of the checkpoint must be used: a weight that no path would read (a bias the config did
    not announce) is an error, never silently dropped.
    """
    out = dict(sd)
    if cfg.tie_word_embeddings:  # transformers lists the shared tensor under both names
        out.pop("lm_head.weight", None)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        _split(out, p + "self_attn.qkv_proj", ("q_proj", "k_proj", "v_proj"), _qkv_sizes(cfg), p + "self_attn.")
        _split(out, p + "mlp.gate_up_proj", ("gate_proj", "up_proj"), [cfg.intermediate_size] * 2, p + "mlp.")
        if cfg.sandwich_norms:
            out[p + "attn_output_norm.weight"] = out.pop(p + "post_attention_layernorm.weight")
            out[p + "post_attention_layernorm.weight"] = out.pop(p + "pre_feedforward_layernorm.weight")
            out[p + "mlp_output_norm.weight"] = out.pop(p + "post_feedforward_layernorm.weight")
    if cfg.model_type in _GEMMA:
        for name in [n for n in out if n.endswith("norm.weight")]:
            out[name] = 1.0 + out[name].float()
    expected = set(expected_tensors(cfg))
    missing, extra = sorted(expected - set(out)), sorted(set(out) - expected)
    if missing or extra:
        raise UnsupportedModel(
            f"{cfg.model_type}: the checkpoint does not match its config: "
            + (f"missing {', '.join(missing[:6])}" if missing else "")
            + (f"{'; ' if missing else ''}unused {', '.join(extra[:6])}" if extra else "")
        )
    return out


def _qkv_sizes(cfg: ModelConfig) -> list[int]:
    d = cfg.head_dim
    return [cfg.num_heads * d, cfg.num_kv_heads * d, cfg.num_kv_heads * d]


def _split(sd: dict[str, torch.Tensor], fused: str, names: tuple[str, ...], sizes: list[int], prefix: str) -> None:
    for suffix in ("weight", "bias"):
        tensor = sd.pop(f"{fused}.{suffix}", None)
        if tensor is not None:
            for name, part in zip(names, tensor.split(sizes)):  # type: ignore[no-untyped-call]  # torch: unannotated
                sd[f"{prefix}{name}.{suffix}"] = part.contiguous()


def expected_tensors(cfg: ModelConfig) -> list[str]:
    """Every canonical tensor name the forward passes read, for this config."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(cfg.num_layers):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        names += [a + f"{x}_proj.weight" for x in "qkvo"] + [m + f"{x}_proj.weight" for x in ("gate", "up", "down")]
        names += [f"model.layers.{i}.input_layernorm.weight", f"model.layers.{i}.post_attention_layernorm.weight"]
        if cfg.attention_bias:
            names += [a + f"{x}_proj.bias" for x in "qkv"]
        if cfg.attention_out_bias:
            names.append(a + "o_proj.bias")
        if cfg.mlp_bias:
            names += [m + f"{x}_proj.bias" for x in ("gate", "up", "down")]
        if cfg.qk_norm:
            names += [a + "q_norm.weight", a + "k_norm.weight"]
        if cfg.sandwich_norms:
            names += [f"model.layers.{i}.attn_output_norm.weight", f"model.layers.{i}.mlp_output_norm.weight"]
    return names


def rope_tables(spec: RopeSpec, stop: int, start: int = 0) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """cos/sin [stop - start, rotary_dim] float32 for positions start..stop-1 in the rotate-half layout, times
    attention_scaling, from Python's float64 libm (the same on every CPU, unlike vectorised transcendental
    kernels), rounded once. Each row depends on its position only."""
    import numpy as np

    half = len(spec.inv_freq)
    cos = np.empty((stop - start, 2 * half), dtype=np.float64)
    sin = np.empty((stop - start, 2 * half), dtype=np.float64)
    s = spec.attention_scaling
    for row, p in enumerate(range(start, stop)):
        angles = [p * f for f in spec.inv_freq]
        row_cos = [math.cos(a) * s for a in angles] if s != 1.0 else [math.cos(a) for a in angles]
        row_sin = [math.sin(a) * s for a in angles] if s != 1.0 else [math.sin(a) for a in angles]
        cos[row, :half] = cos[row, half:] = row_cos
        sin[row, :half] = sin[row, half:] = row_sin
    return cos.astype(np.float32), sin.astype(np.float32)
