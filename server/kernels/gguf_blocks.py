"""GGUF block bytes unpacked into their fields (scales, minimums, raw quants), as gguf.quants reads them."""

from __future__ import annotations

import numpy as np


def _f16_field(blocks: np.ndarray, at: int) -> np.ndarray:
    """The float16 at byte `at` of every block [N, nb, bytes] -> [N, nb] float16."""
    return np.ascontiguousarray(blocks[..., at : at + 2]).view(np.float16)[..., 0]


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[..., 16] bytes -> [..., 32] values: the low nibbles, then the high ones (GGUF's 32-block order)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bit_planes(qh: np.ndarray) -> np.ndarray:
    """[..., 4] bytes of a little-endian uint32 -> [..., 32] its bits (value j: bit j), as uint8 0/1."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 scale bytes [..., 12] -> the eight 6-bit scales and mins [..., 8] (get_scale_min)."""
    sc = np.concatenate([s[..., 0:4] & 63, (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)], axis=-1)
    mn = np.concatenate([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)], axis=-1)
    return sc, mn


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """Q2_K/Q3_K's 64 bytes [..., 64] -> the 256 two-bit values: value 128h + 32s + l is bits 2s of byte 32h + l."""
    shifts = np.array([0, 2, 4, 6], np.uint8)[:, None]
    return ((qs.reshape(*qs.shape[:-1], 2, 1, 32) >> shifts) & 3).reshape(*qs.shape[:-1], 256)


def _q3_k_scales(s: np.ndarray) -> np.ndarray:
    """Q3_K's 12 scale bytes [..., 12] -> the sixteen 6-bit scales minus 32, int8 (gguf.quants' order)."""
    lo = (s[..., None, :8] >> np.array([0, 4], np.uint8)[:, None]).reshape(*s.shape[:-1], 16) & 0x0F
    hi = (s[..., None, 8:] >> np.array([0, 2, 4, 6], np.uint8)[:, None]).reshape(*s.shape[:-1], 16) & 3
    return ((lo | (hi << 4)).astype(np.int16) - 32).astype(np.int8)


def unpack_gguf_blocks(rows: np.ndarray, fmt: str) -> dict[str, np.ndarray | None]:
    """GGUF block bytes [N, bytes per row] of a BLOCK_FORMATS type -> d [N, nb] and m (the minimum, or
    K-types' dmin) float16, K-types' sub-block sc [N, nb, S/L] and mn, and the raw unsigned quants q [N, K]."""
    size = {"q4_0": 18, "q5_0": 22, "q5_1": 24, "q2_k": 84, "q3_k": 110, "q4_k": 144, "q5_k": 176, "q6_k": 210}[fmt]
    n = rows.shape[0]
    b = np.ascontiguousarray(rows, dtype=np.uint8).reshape(n, -1, size)
    out: dict[str, np.ndarray | None] = {"m": None, "sc": None, "mn": None}
    if fmt == "q4_0":
        out.update(d=_f16_field(b, 0), q=_nibbles(b[..., 2:]))
    elif fmt == "q5_0":
        out.update(d=_f16_field(b, 0), q=_nibbles(b[..., 6:]) | (_bit_planes(b[..., 2:6]) << 4))
    elif fmt == "q5_1":
        out.update(d=_f16_field(b, 0), m=_f16_field(b, 2), q=_nibbles(b[..., 8:]) | (_bit_planes(b[..., 4:8]) << 4))
    elif fmt in ("q4_k", "q5_k"):
        sc, mn = _k_scales(b[..., 4:16])
        qs = b[..., -128:].reshape(n, -1, 4, 32)  # 4 x 32 bytes: sub-blocks 2i (low nibbles) and 2i+1 (high)
        q = np.stack([qs & 0x0F, qs >> 4], axis=3).reshape(n, -1, 8, 32)
        if fmt == "q5_k":  # qh[l] bit s: bit 4 of value l of sub-block s
            q = q | (((b[..., 16:48, None] >> np.arange(8, dtype=np.uint8)) & 1).transpose(0, 1, 3, 2) << 4)
        out.update(d=_f16_field(b, 0), m=_f16_field(b, 2), sc=sc.astype(np.int8), mn=mn, q=q)
    elif fmt == "q2_k":  # scales[16] (sc low nibble, mn high), qs[64], d, dmin
        out.update(d=_f16_field(b, 80), m=_f16_field(b, 82), sc=(b[..., :16] & 0x0F).view(np.int8), mn=b[..., :16] >> 4)
        out.update(q=_crumbs(b[..., 16:80]))
    elif fmt == "q3_k":  # hmask[32], qs[64], scales[12] (16 six-bit, minus 32), d; q = low 2 bits | hmask bit << 2
        hbit = (b[..., None, :32] >> np.arange(8, dtype=np.uint8)[:, None]) & 1  # [N, nb, 8, 32]: value 32i + l
        q = _crumbs(b[..., 32:96]) | (hbit.reshape(n, -1, 256) << 2)
        out.update(d=_f16_field(b, 108), sc=_q3_k_scales(b[..., 96:108]), q=q)
    else:  # q6_k: ql[128], qh[64], int8 scales[16], d
        ql = b[..., :128].reshape(n, -1, 2, 64)
        ql = np.concatenate([ql & 0x0F, ql >> 4], axis=-1).reshape(n, -1, 2, 4, 32)
        qh = (b[..., 128:192].reshape(n, -1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3
        out.update(d=_f16_field(b, 208), sc=b[..., 192:208].view(np.int8), q=ql | (qh << 4))
    out["q"] = np.ascontiguousarray(out["q"], dtype=np.uint8).reshape(n, -1)
    return out
