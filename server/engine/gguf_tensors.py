"""Read a GGUF file's tensors as they are stored (blocks straight from the file's mmap), under the canonical names."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
import torch

if TYPE_CHECKING:
    from gguf import GGUFReader, ReaderTensor

    from .arch import ModelConfig

_Value = TypeVar("_Value")

# Every GGUF type whose blocks a StoredTensor can carry (the packer decides which it keeps as stored).
GGUF_TYPES = ("f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
# A block's scale layout is per row, so every row operation (split, un-permute) works on the raw bytes too.
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    # before the MLP: Llama's post_attention_layernorm, Gemma 2/3's pre_feedforward_layernorm (same canonical name)
    "ffn_norm": "post_attention_layernorm",
    "post_attention_norm": "attn_output_norm",  # Gemma 2/3's norm of the attention output
    "post_ffw_norm": "mlp_output_norm",  # ... and of the MLP output
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Read by no path: the RoPE factors come from the config (transformers reads them from the metadata).
_IGNORED = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
_PERMUTED_ARCHS = ("llama", "mistral")  # llama.cpp's converter interleaves q/k rows for these


@dataclasses.dataclass
class StoredTensor:
    format: str  # a GGUF_TYPES name
    rows: npt.NDArray[Any]  # [N, bytes per row] uint8 for block types; [N, K] float32/float16/uint16 (bf16) for floats


Weight = torch.Tensor | StoredTensor  # a canonical state dict's value: float, or a matrix as stored


class LazyTensors(Mapping[str, _Value]):
    """name -> value, each value made by its thunk at every access (never kept: one matrix at a time). The
    index itself is built at the first use, so a start that never reads the weights never opens the file."""

    def __init__(self, index: Callable[[], dict[str, Callable[[], _Value]]]):
        self._make_index = index
        self._index: dict[str, Callable[[], _Value]] | None = None

    def _thunks(self) -> dict[str, Callable[[], _Value]]:
        if self._index is None:
            self._index = self._make_index()
        return self._index

    def __getitem__(self, name: str) -> _Value:
        return self._thunks()[name]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._thunks())

    def __len__(self) -> int:
        return len(self._thunks())


def dequantize(t: StoredTensor) -> torch.Tensor:
    """float32 [N, K] of a stored matrix, as gguf-py (and so transformers) dequantises it."""
    import gguf

    if t.format == "bf16":  # stored rows are uint16 here; gguf-py reads BF16 as bytes
        return torch.from_numpy((t.rows.astype(np.uint32) << 16).view(np.float32))
    kind = gguf.GGMLQuantizationType[t.format.upper()]
    return torch.from_numpy(np.array(gguf.quants.dequantize(t.rows, kind), dtype=np.float32))  # a copy: writable


def _field(reader: GGUFReader, key: str) -> Any:
    field = reader.fields[key]
    return field.contents() if hasattr(field, "contents") else bytes(field.parts[-1]).decode()


def _rows(t: ReaderTensor) -> tuple[str, npt.NDArray[Any]]:
    """(format, [N, ...] rows) of a reader tensor: a view into the file's mmap."""
    fmt = t.tensor_type.name.lower()
    if fmt not in GGUF_TYPES:
        raise ValueError(
            f"{t.name}: GGUF type {t.tensor_type.name} is not supported; supported: {', '.join(GGUF_TYPES)}"
        )
    data = t.data
    if fmt == "bf16":  # gguf-py gives BF16 as raw bytes [N, 2K]
        data = data.view(np.uint16)
    return fmt, data.reshape(int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1, -1)


def _unpermute(rows: npt.NDArray[Any], heads: int) -> npt.NDArray[Any]:
    """Undo llama.cpp's q/k row interleaving: HF row (h, t, i) is GGUF row (h, i, t). Rows only, so it
    works on quantised rows and on biases ([N, 1]) too."""
    half = rows.shape[0] // heads // 2
    order = np.arange(rows.shape[0]).reshape(heads, half, 2).transpose(0, 2, 1).reshape(-1)
    unpermuted: npt.NDArray[Any] = rows[order]
    return unpermuted


def _canonical_name(gguf_name: str) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{suffix}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
    return None


def _vector(t: ReaderTensor, start: int, stop: int, heads: int) -> torch.Tensor:
    """A 1-D tensor (norm, bias) as a small float32 copy; F32 keeps its exact bits."""
    fmt, rows = _rows(t)
    values = np.array(rows, dtype=np.float32) if fmt == "f32" else dequantize(StoredTensor(fmt, rows)).numpy()
    values = values.reshape(-1, 1)[start:stop]
    return torch.from_numpy(np.ascontiguousarray(_unpermute(values, heads) if heads else values).reshape(-1))


def _matrix(t: ReaderTensor, start: int, stop: int, heads: int) -> StoredTensor:
    """Rows start:stop of a 2-D tensor as stored: a view into the mmap (a copy only where rows are un-permuted)."""
    fmt, rows = _rows(t)
    rows = rows[start:stop]
    return StoredTensor(fmt, _unpermute(rows, heads) if heads else rows)


def _thunk(t: ReaderTensor, start: int, stop: int, heads: int = 0) -> tuple[bool, Callable[[], Weight]]:
    """(is a matrix, the thunk making its value)."""
    make = _vector if len(t.shape) == 1 else _matrix
    return len(t.shape) > 1, lambda: make(t, start, stop, heads)


def _parts(t: ReaderTensor, cfg: ModelConfig) -> list[tuple[str, int, int]]:
    """(canonical name, first row, end row) of each part of a tensor: Phi-3's fused q/k/v and gate/up split by rows."""
    base, _, suffix = t.name.rpartition(".")
    rows = int(t.shape[-1]) if len(t.shape) > 1 else int(t.shape[0])
    prefix = f"model.layers.{base.split('.')[1]}." if base.startswith("blk.") else ""
    if base.endswith(".attn_qkv"):
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        bounds = [("q", 0, q), ("k", q, q + kv), ("v", q + kv, q + 2 * kv)]
        return [(f"{prefix}self_attn.{x}_proj.{suffix}", a, b) for x, a, b in bounds]
    if base.endswith(".ffn_up") and rows == 2 * cfg.intermediate_size:
        i = cfg.intermediate_size
        return [(f"{prefix}mlp.gate_proj.{suffix}", 0, i), (f"{prefix}mlp.up_proj.{suffix}", i, 2 * i)]
    name = _canonical_name(t.name)
    if name is None:
        raise ValueError(f"GGUF tensor {t.name}: no path reads it (unknown name)")
    return [(name, 0, rows)]


def _index(path: Path, cfg: ModelConfig) -> dict[str, tuple[bool, Callable[[], Weight]]]:
    """canonical name -> (is a matrix, thunk), for every tensor of the file (reading no tensor data yet)."""
    import gguf

    from .arch import UnsupportedModel, expected_tensors

    reader = gguf.GGUFReader(str(path))
    permuted = _field(reader, "general.architecture") in _PERMUTED_ARCHS
    out: dict[str, tuple[bool, Callable[[], Weight]]] = {}
    for t in reader.tensors:
        if t.name in _IGNORED:
            continue
        for name, start, stop in _parts(t, cfg):
            heads = 0
            if permuted and ".self_attn.q_proj." in name:
                heads = cfg.num_heads
            elif permuted and ".self_attn.k_proj." in name:
                heads = cfg.num_kv_heads
            out[name] = _thunk(t, start, stop, heads)
    if cfg.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    elif "lm_head.weight" not in out and "model.embed_tokens.weight" in out:  # llama.cpp reads the embedding then
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    expected = set(expected_tensors(cfg))
    missing, extra = sorted(expected - set(out)), sorted(set(out) - expected)
    if missing or extra:
        raise UnsupportedModel(f"{path}: tensors do not match the config: missing {missing[:6]}, unused {extra[:6]}")
    return out


def read_gguf(path: Path, cfg: ModelConfig) -> tuple[Mapping[str, torch.Tensor], Mapping[str, StoredTensor]]:
    """(state, stored) of a GGUF file, under canonical names (arch.canonical_state_dict's, every option folded
    in): state gives every tensor as float32 (matrices dequantised at each access), stored every matrix as a
    StoredTensor (rows viewing the mmap). Gemma's norms are stored as 1 + w already: the canonical value.
    Nothing is read before the first access."""
    index = functools.cache(lambda: _index(path, cfg))
    every = LazyTensors(lambda: {name: make for name, (_, make) in index().items()})
    matrices = LazyTensors(lambda: {name: make for name, (matrix, make) in index().items() if matrix})
    return Dequantised(every), cast("Mapping[str, StoredTensor]", matrices)  # a matrix's thunk is _matrix


def as_float(t: Weight) -> torch.Tensor:
    """A canonical state dict value as a float32 torch tensor (dequantised if stored)."""
    return dequantize(t) if isinstance(t, StoredTensor) else t


class Dequantised(Mapping[str, torch.Tensor]):
    """A view of a state dict with every StoredTensor dequantised at access (one matrix at a time)."""

    def __init__(self, state: Mapping[str, Weight]):
        self.state = state

    def __getitem__(self, name: str) -> torch.Tensor:
        return as_float(self.state[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.state)

    def __len__(self) -> int:
        return len(self.state)
