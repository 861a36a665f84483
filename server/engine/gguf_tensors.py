"""Read a GGUF file's weight tensors as they are stored (quantised blocks), named as Hugging Face names them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

# GGUF tensor type names we can keep as stored -> our format names
STORED_FORMATS = {"F32": "f32", "Q8_0": "q8_0", "Q4_1": "q4_1"}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_PERMUTED_ARCHS = ("llama", "mistral")  # llama.cpp's converter interleaves q/k rows for these


@dataclasses.dataclass
class StoredTensor:
    format: str  # f32, q8_0 or q4_1
    rows: np.ndarray  # [N, bytes per row] for quantised formats, [N, K] float32 for f32


def _hf_name(name: str) -> str | None:
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output.weight":
        return "lm_head.weight"
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.weight"
    return None


def _unpermute(rows: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row interleaving: HF row (h, t, i) is GGUF row (h, i, t). Rows only, so it
    works on quantised rows too."""
    half = rows.shape[0] // heads // 2
    order = np.arange(rows.shape[0]).reshape(heads, half, 2).transpose(0, 2, 1).reshape(-1)
    return rows[order]


def read_stored_matrices(path: Path, num_heads: int, num_kv_heads: int) -> dict[str, StoredTensor]:
    """The 2-D weight matrices of a GGUF file whose storage type we support, by Hugging Face name."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
    out: dict[str, StoredTensor] = {}
    for t in reader.tensors:
        hf = _hf_name(t.name)
        fmt = STORED_FORMATS.get(t.tensor_type.name)
        if hf is None or fmt is None or len(t.shape) != 2:
            continue
        rows = np.asarray(t.data)
        if fmt == "f32":
            rows = rows.reshape(int(t.shape[1]), int(t.shape[0]))
        if arch in _PERMUTED_ARCHS and (".attn_q." in t.name or ".attn_k." in t.name):
            rows = _unpermute(rows, num_heads if ".attn_q." in t.name else num_kv_heads)
        out[hf] = StoredTensor(fmt, rows)
    return out
