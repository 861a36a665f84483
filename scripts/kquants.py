"""numpy quantisers for GGUF's K-types (Q2_K..Q6_K), which the gguf package can only dequantise.

Each packs 256-value super-blocks in exactly the byte layout that gguf.quants (and llama.cpp's
ggml-quants.c) reads. The scale search is deliberately simple (min/max or max-abs per sub-block, then the
sub-block scales quantised against one fp16 super-scale); the quantised values are then rounded against the
scales as they will be decoded, so the blocks are valid and close, though not llama.cpp's bit for bit.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
BLOCK_BYTES = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}


def _f16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the fp16 bytes [n, 2], the value they decode to as float32 [n, 1])."""
    h = x.astype(np.float16).reshape(-1, 1)
    return h.view(np.uint8), h.astype(np.float32)


def _asymmetric(x: np.ndarray, sub: int, qmax: int, smax: int):
    """Min/max scales for d * sc * q - dmin * m: (q [n, 256], sc and m [n, 256 / sub], d and dmin bytes)."""
    n = x.shape[0]
    xs = x.reshape(n, -1, sub)
    lo = np.minimum(xs.min(axis=-1), 0.0)  # the format subtracts a non-negative min
    scale = (xs.max(axis=-1) - lo) / qmax
    d_b, d = _f16(scale.max(axis=-1) / smax)
    m_b, dm = _f16(-lo.min(axis=-1) / smax)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.clip(np.where(d > 0, np.ceil(scale / d), 0), 0, smax).astype(np.uint8)
        mn = np.clip(np.where(dm > 0, np.rint(-lo / dm), 0), 0, smax).astype(np.uint8)
        eff_s = (d * sc)[..., None]
        eff_m = (dm * mn)[..., None]
        q = np.where(eff_s > 0, np.rint((xs + eff_m) / eff_s), 0)
    q = np.clip(q, 0, qmax).astype(np.uint8).reshape(n, QK_K)
    return q, sc, mn, d_b, m_b


def _symmetric(x: np.ndarray, sub: int, qneg: int, qpos: int, smax: int):
    """Max-abs scales for d * sc * q, q in [-qneg, qpos]: (q [n, 256] signed, sc [n, 256 / sub] signed, d bytes).
    The largest |x| of a sub-block maps to -qneg (a negative scale when it is positive): the wider side."""
    n = x.shape[0]
    xs = x.reshape(n, -1, sub)
    idx = np.abs(xs).argmax(axis=-1)[..., None]
    scale = -np.take_along_axis(xs, idx, axis=-1)[..., 0] / qneg
    d_b, d = _f16(np.abs(scale).max(axis=-1) / smax)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.clip(np.where(d > 0, np.rint(scale / d), 0), -smax, smax).astype(np.int8)
        eff = (d * sc)[..., None]
        q = np.where(eff != 0, np.rint(xs / eff), 0)
    q = np.clip(q, -qneg, qpos).astype(np.int8).reshape(n, QK_K)
    return q, sc, d_b


def _pack_bits(q: np.ndarray, groups: int, width: int, shifts: int) -> np.ndarray:
    """Values [n, 256] as `groups` byte groups, each byte holding `shifts` consecutive runs of `width`-bit
    fields: value (g, s, l) sits in byte g * run + l at bit s * width (the layout gguf.quants unpacks)."""
    n = q.shape[0]
    v = q.astype(np.uint8).reshape(n, groups, shifts, -1)
    out = np.zeros((n, groups, v.shape[-1]), np.uint8)
    for s in range(shifts):
        out |= v[:, :, s, :] << np.uint8(s * width)
    return out.reshape(n, -1)


def _pack_scales_k4(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Q4_K / Q5_K's 12 bytes of eight 6-bit scales and mins (see Q4_K.get_scale_min)."""
    lo = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    mid = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    hi = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return np.concatenate([lo, mid, hi], axis=1).astype(np.uint8)


def quantize_q2_k(x: np.ndarray) -> np.ndarray:
    q, sc, mn, d_b, m_b = _asymmetric(x, 16, 3, 15)
    return np.concatenate([sc | (mn << 4), _pack_bits(q, 2, 2, 4), d_b, m_b], axis=1)


def quantize_q3_k(x: np.ndarray) -> np.ndarray:
    q, sc, d_b = _symmetric(x, 16, 4, 3, 31)
    u = (q.astype(np.int16) + 4).astype(np.uint8)  # stored q + 4 in [0, 7]; its bit 2 goes to hmask
    hmask = _pack_bits(u >> 2, 1, 1, 8)
    qs = _pack_bits(u & 3, 2, 2, 4)
    s6 = (sc.astype(np.int16) + 32).astype(np.uint8)
    low = (s6[:, :8] & 0x0F) | ((s6[:, 8:] & 0x0F) << 4)
    h2 = (s6 >> 4).reshape(-1, 4, 4)  # scale k * 4 + b: byte 8 + b, bits 2k
    high = h2[:, 0] | (h2[:, 1] << 2) | (h2[:, 2] << 4) | (h2[:, 3] << 6)
    return np.concatenate([hmask, qs, low, high, d_b], axis=1)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    q, sc, mn, d_b, m_b = _asymmetric(x, 32, 15, 63)
    return np.concatenate([d_b, m_b, _pack_scales_k4(sc, mn), _pack_bits(q, 4, 4, 2)], axis=1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    q, sc, mn, d_b, m_b = _asymmetric(x, 32, 31, 63)
    qh = _pack_bits(q >> 4, 1, 1, 8)
    qs = _pack_bits(q & 0x0F, 4, 4, 2)
    return np.concatenate([d_b, m_b, _pack_scales_k4(sc, mn), qh, qs], axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    q, sc, d_b = _symmetric(x, 16, 32, 31, 127)
    u = (q.astype(np.int16) + 32).astype(np.uint8)
    ql = _pack_bits(u & 0x0F, 2, 4, 2)
    qh = _pack_bits(u >> 4, 2, 2, 4)
    return np.concatenate([ql, qh, sc.view(np.uint8), d_b], axis=1)


QUANTIZERS = {
    "Q2_K": quantize_q2_k,
    "Q3_K": quantize_q3_k,
    "Q4_K": quantize_q4_k,
    "Q5_K": quantize_q5_k,
    "Q6_K": quantize_q6_k,
}


def quantize(data: np.ndarray, type_name: str) -> np.ndarray:
    """A float array [..., K] (K a multiple of 256) as K-type blocks: uint8 [..., K / 256 * block bytes]."""
    if data.shape[-1] % QK_K:
        raise ValueError(f"{type_name} needs rows that are a multiple of {QK_K}, got {data.shape[-1]}")
    blocks = np.ascontiguousarray(data, dtype=np.float32).reshape(-1, QK_K)
    packed = QUANTIZERS[type_name](blocks)
    assert packed.shape[1] == BLOCK_BYTES[type_name], (type_name, packed.shape)
    return packed.reshape(*data.shape[:-1], data.shape[-1] // QK_K * BLOCK_BYTES[type_name])
