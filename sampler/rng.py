"""Counter-based uniforms: a SplitMix64 hash of (seed, sample index, step) in torch int64 arithmetic."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence

import torch

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio, SplitMix64's increment
MUL1 = 0xBF58476D1CE4E5B9
MUL2 = 0x94D049BB133111EB
DOMAIN = 0x5EED5EED00000001  # separates these streams from other uses of the same seed
TWO_POW_M53 = 2.0**-53
PYTHON_HASH_MAX_ROWS = 256  # up to here uniforms_for() hashes in Python


def _signed(v: int) -> int:
    """uint64 -> the int64 with the same bits."""
    v &= MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


def _lsr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser; int64 multiplication wraps modulo 2**64 on every torch backend."""
    z = (z ^ _lsr(z, 30)) * _signed(MUL1)
    z = (z ^ _lsr(z, 27)) * _signed(MUL2)
    return z ^ _lsr(z, 31)


def _seed_state(seed: int) -> int:
    """int64 bits of mix(seed ^ DOMAIN): Python integers, the same on every device."""
    return _signed(_py_mix((seed ^ DOMAIN) & MASK64))


_cached_state = functools.lru_cache(maxsize=65536)(_seed_state)  # a request keeps its seed


def hash_keys(states: torch.Tensor, sample_indices: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """int64 [B] bits of H(seed, sample_index, step); states from seed_states(), others int64 [B]."""
    counter = (sample_indices * (1 << 32) + steps + 1) * _signed(GOLDEN)  # wraps modulo 2**64
    return _mix(states ^ _mix(counter))


def uniforms(states: torch.Tensor, sample_indices: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """float64 [B] in [0, 1): the top 53 bits of the hash, exact on any device."""
    return _lsr(hash_keys(states, sample_indices, steps), 11).to(torch.float64) * TWO_POW_M53


def uniforms_for(
    seeds: Sequence[int | None], sample_indices: Sequence[int], steps: Sequence[int], device: torch.device | str | None
) -> torch.Tensor:
    """float64 [B] uniforms of (seed, sample index, step) rows; the same bits as uniforms(seed_states(...), ...).

    Python integers for small batches: a handful of torch int64 ops costs more than the hash itself there.
    """
    if len(seeds) > PYTHON_HASH_MAX_ROWS:
        states = seed_states(seeds, device)
        idx = torch.as_tensor(sample_indices, dtype=torch.int64).to(device)
        return uniforms(states, idx, torch.as_tensor(steps, dtype=torch.int64).to(device))
    values = [
        _uniform_from_state(_seed_state(secrets.randbits(64)) if s is None else _cached_state(s), i, t)
        for s, i, t in zip(seeds, sample_indices, steps, strict=True)
    ]
    return torch.tensor(values, dtype=torch.float64, device=device)


def _uniform_from_state(state: int, sample_index: int, step: int) -> float:
    """uniforms() for one row in Python integers; state is seed_states()'s int64 bits."""
    counter = ((sample_index << 32) + step + 1) * GOLDEN & MASK64  # the torch version wraps the same way
    h = _py_mix((state & MASK64) ^ _py_mix(counter))
    return (h >> 11) * TWO_POW_M53  # a 53-bit integer times a power of two: exact in float64


def seed_states(seeds: Sequence[int | None], device: torch.device | str | None) -> torch.Tensor:
    """int64 [B] per-seed states; None draws a fresh 64-bit seed from `secrets` (never torch's RNG)."""
    return torch.tensor(
        [_seed_state(secrets.randbits(64)) if s is None else _cached_state(s) for s in seeds],
        dtype=torch.int64,
        device=device,
    )


def _py_mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * MUL1) & MASK64
    z = ((z ^ (z >> 27)) * MUL2) & MASK64
    return z ^ (z >> 31)


def python_uniform(seed: int, sample_index: int, step: int) -> float:
    """The same uniform with Python integers (the specification the tensors must match).

    Valid for 0 <= step < 2**32 and 0 <= sample_index < 2**31.
    """
    counter = ((sample_index << 32) + step + 1) * GOLDEN & MASK64
    h = _py_mix(_py_mix((seed ^ DOMAIN) & MASK64) ^ _py_mix(counter))
    return (h >> 11) * TWO_POW_M53
