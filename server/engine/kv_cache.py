"""Per-sequence key/value cache that grows in fixed blocks."""

from __future__ import annotations

import torch

GROW_BLOCK = 128  # capacity grows in multiples of this many positions
_SHORT = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def kv_tag(kv_dtype: torch.dtype, compute_dtype: torch.dtype) -> str:
    """engine_version's mark of a KV cache stored in another type than the model computes in ('' if the same)."""
    return "" if kv_dtype == compute_dtype else f".kv{_SHORT[kv_dtype]}"


class SequenceKVCache:
    """Keys and values of one sequence for every layer: [layers, Hkv, capacity, D] each.

    Capacity depends only on the sequence's own length, never on other
    traffic, so the tensors attention reads have the same shapes solo or under load.
    """

    keys: torch.Tensor
    values: torch.Tensor
    length: int  # positions filled (for the last layer written)

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, device: torch.device, dtype: torch.dtype):
        self.shape = (num_layers, num_kv_heads, 0, head_dim)
        self.device, self.dtype = device, dtype
        self.release()  # no positions yet

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def reserve(self, length: int) -> None:
        """Make room for `length` positions, copying what is there."""
        if length <= self.capacity:
            return
        cap = -(-length // GROW_BLOCK) * GROW_BLOCK
        layers, heads, _, dim = self.shape
        keys = torch.zeros((layers, heads, cap, dim), device=self.device, dtype=self.dtype)
        values = torch.zeros_like(keys)
        keys[:, :, : self.capacity] = self.keys
        values[:, :, : self.capacity] = self.values
        self.keys, self.values = keys, values

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v [n, Hkv, D] at positions start..start+n; return keys/values [Hkv, start+n, D]."""
        end = start + k.shape[0]
        self.reserve(end)
        self.keys[layer, :, start:end] = k.transpose(0, 1)
        self.values[layer, :, start:end] = v.transpose(0, 1)
        self.length = end
        return self.keys[layer, :, :end], self.values[layer, :, :end]

    def copy_from(self, other: SequenceKVCache) -> None:
        """Become a copy of `other` (same capacity, so attention reads the same shapes and strides)."""
        self.keys, self.values = other.keys.clone(), other.values.clone()
        self.length = other.length

    def release(self) -> None:
        """Drop every position (the sequence has ended): its memory goes now, not when the last reference to the
        sequence does."""
        self.keys = torch.empty(self.shape, device=self.device, dtype=self.dtype)
        self.values = torch.empty(self.shape, device=self.device, dtype=self.dtype)
        self.length = 0

    def nbytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()
