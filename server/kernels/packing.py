"""Pack weight matrices into the kernels' tile layouts, from GGUF blocks or from float weights.

A matrix W [N, K] is cut into tiles of 16 output rows; inside a tile, data is interleaved per 32-value
block so that one SIMD load serves 16 output columns (see csrc/gemm.cpp). Formats:
  f32   tile = float w[K][16]
  q8_0  tile block (544 B) = float16 d[16], int8 q[32 k][16 lanes]
  q4_1  tile block (320 B) = float16 d[16], float16 m[16], uint8 q[16 k][16 lanes]
        (the byte for k holds value k in its low and value k+16 in its high nibble, as GGUF does)
  q4_0, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k: GGUF's blocks regrouped per 16 columns (csrc/gemm_blocks.h):
        float16 d[16]; [float16 m or dmin [16]]; [K-types: the sub-block scales (and minima) as SCALE_FIELDS];
        per 32 values: the low LO bits, uint8 lo[32 LO / 8][16] (LO = 4: as q4_1; LO = 2: value j in row j % 8,
        bits 2 (j // 8)), then the H high bits, uint8 hi[4 H][16] (value j in row j // (8 / H), bits H (j % (8 / H)));
        q6_k instead per 32 values 8 groups of 4 values, 48 bytes each: lane l's 24 bits at 3 l, value 4g + i in
        bits 6 i as q - 32 in 6-bit two's complement (csrc/gemm_group6.h); q4_k and q4_0 the nibble rows regrouped
        as the int8 layout's (below): uint8 q[4 groups][16 lanes][4] (csrc/gemm_nibble32.h)
        So every block format's tile block is 16 x the GGUF's block: the packed weights are the file's size.
  K-type scale fields (csrc/gemm_scales.h): per column FIELDS integers of BITS bits (Q3_K, Q6_K: the scale of
        sub-block s is field s; Q2_K, Q4_K, Q5_K: its scale and minimum fields 2s and 2s + 1), as byte rows of
        16 lanes: BITS = 8 int8 f[FIELDS][16]; BITS = 4 or 6 the low 4 bits uint8 lo[FIELDS / 2][16] (field i in
        row i // 2, bits 4 (i % 2)), for BITS = 6 then the top 2 bits uint8 hi[FIELDS / 4][16] (field i in row
        i // 4, bits 2 (i % 4)); a field's value is its bits less BIAS (Q3_K: 32). FIELDS * BITS / 8 bytes a
        column, as the GGUF's (Q4_K: row s holds sc | mn << 4 of sub-block s, as 4 bits each)
  f16, bf16  tile = uint16 w[K][16] (widened exactly to float32 in registers)
A fused matrix whose parts are stored in different formats is a chain of parts (PackedMatrix.next).
Scales are float16, as GGUF stores them (a one-row step is bound by the bytes it reads); quantising
float weights on load rounds its scales to float16 first, as llama.cpp does.

With int8 activations (for_int8_activations) a block keeps the same bytes, its quants regrouped so that
each 32-bit lane holds 4 consecutive quant bytes of one column (csrc/gemm_i8.cpp):
  q8_0  int8 q[8 groups][16 lanes][4]   (byte j of group g: value 4g + j)
  q4_1, q4_0  uint8 q[4 groups][16 lanes][4]  (byte j of group g: values 4g + j and 16 + 4g + j)
  q5_0, q5_1, q4_k, q5_k, q6_k  the scales as before; per 32 values the 4 low bits as q4_1's, then the high
        bits: one (q5_*) uint8 hv[16 lanes][4] (byte j, bit g + 4u: value 16u + 4g + j), two (q6_k)
        uint8 hv[2 u][16 lanes][4] (byte j, bits 2g and 2g + 1: value 16u + 4g + j)
"""

from __future__ import annotations

import ctypes
import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

from .gguf_blocks import unpack_gguf_blocks
from .lib import (
    ACTIVATION_CODES,
    FORMAT_CODES,
    NR,
    Q4_1_QS,
    Q4_1_TILE_BLOCK,
    Q8_0_QS,
    Q8_0_TILE_BLOCK,
    QK,
    Matrix,
)

if TYPE_CHECKING:
    import os

PACK_LAYOUT = "5"  # bump when a tile layout changes (names the cached packed weights)
# NR (output columns per tile), QK (values per block) and the tile block sizes: lib.py, checked against the library.
# Most precise first: a stored tensor is kept as it is when its format is at least as precise as the
# one asked for.
PRECISION = ("f32", "q8_0", "q4_1")
# Bits per weight of every format the kernels multiply in (a GGUF matrix in one of them is kept as stored).
BITS = {
    "f32": 32.0,
    "f16": 16.0,
    "bf16": 16.0,
    "q8_0": 8.5,
    "q6_k": 6.5625,
    "q5_1": 6.0,
    "q5_k": 5.5,
    "q5_0": 5.5,
    "q4_1": 5.0,
    "q4_k": 4.5,
    "q4_0": 4.5,
    "q3_k": 3.4375,
    "q2_k": 2.625,
}
STORED_FORMATS = tuple(sorted(BITS))
# K-types' sub-block scale fields (csrc/gemm_scales.h ScaleFields): (bits a field, bias: a field's value is its
# bits less it); a format with a minimum has two fields a sub-block (scale, minimum), else one (the scale).
SCALE_FIELDS = {"q2_k": (4, 0), "q3_k": (6, 32), "q4_k": (6, 0), "q5_k": (6, 0), "q6_k": (8, 0)}
# Block formats of csrc/gemm_blocks.h: (values per block S, values per sub-block L, low bits LO, high bits H,
# K-type)
BLOCK_FORMATS = {
    "q4_0": (32, 32, 4, 0, False),
    "q5_0": (32, 32, 4, 1, False),
    "q5_1": (32, 32, 4, 1, False),
    "q2_k": (256, 16, 2, 0, True),
    "q3_k": (256, 16, 2, 1, True),
    "q4_k": (256, 32, 4, 0, True),
    "q5_k": (256, 32, 4, 1, True),
    "q6_k": (256, 16, 4, 2, True),
}


@dataclasses.dataclass
class PackedMatrix:
    """A packed weight matrix and what the C struct points at (kept alive here)."""

    format: str
    n: int
    k: int
    data: torch.Tensor  # uint8, packed tiles
    bias: torch.Tensor | None = None  # float32 [n]
    activations: str = "float32"  # what the GEMM multiplies these weights with (ACTIVATION_CODES)
    next: PackedMatrix | None = None  # the following output columns, in another format (a chain)

    def desc(self) -> Matrix:
        """The C struct; it holds a reference to this matrix, so the memory it points at stays alive."""
        m = Matrix(
            FORMAT_CODES[self.format],
            self.n,
            self.k,
            ACTIVATION_CODES[self.activations],
            self.data.data_ptr(),
            None if self.bias is None else self.bias.data_ptr(),
        )
        if self.next is not None:
            nxt = self.next.desc()
            m.next = ctypes.pointer(nxt)
            m.next_desc = nxt  # keeps the part (and what it points at) alive
        m.owner = self
        return m

    def parts(self) -> list[PackedMatrix]:
        out: list[PackedMatrix] = []
        p: PackedMatrix | None = self
        while p is not None:
            out.append(p)
            p = p.next
        return out

    @property
    def formats(self) -> list[str]:
        return [p.format for p in self.parts()]

    @property
    def rows(self) -> int:
        return sum(p.n for p in self.parts())

    @property
    def nbytes(self) -> int:
        return sum(p.data.numel() for p in self.parts())


def _check_shape(n: int, k: int) -> None:
    if n % NR or k % QK:
        raise ValueError(f"matrix [{n}, {k}]: rows must be a multiple of {NR} and columns of {QK}")


def _bytes(a: np.ndarray) -> np.ndarray:
    """View the last axis of a contiguous array as bytes."""
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).reshape(*a.shape[:-1], -1)


def pack_f32(w: np.ndarray, bias: np.ndarray | None = None) -> PackedMatrix:
    n, k = w.shape
    _check_shape(n, k)
    tiles = np.ascontiguousarray(w.astype(np.float32).reshape(n // NR, NR, k).transpose(0, 2, 1))  # [T, K, 16]
    return _packed("f32", n, k, tiles.view(np.uint8).reshape(-1), bias)


def pack_q8_0(d: np.ndarray, q: np.ndarray, bias: np.ndarray | None = None) -> PackedMatrix:
    """d: [N, nb] scales, q: [N, nb, 32] int8."""
    n, nb = d.shape
    _check_shape(n, nb * QK)
    t = n // NR
    d_t = _half(d).reshape(t, NR, nb).transpose(0, 2, 1)  # [T, nb, 16]
    q_t = q.astype(np.int8).reshape(t, NR, nb, QK).transpose(0, 2, 3, 1).reshape(t, nb, QK * NR)  # [T, nb, k*16+lane]
    blocks = np.concatenate([_bytes(d_t), _bytes(q_t)], axis=-1)  # [T, nb, 544]
    return _packed("q8_0", n, nb * QK, blocks.reshape(-1), bias)


def pack_q4_1(d: np.ndarray, m: np.ndarray, qs: np.ndarray, bias: np.ndarray | None = None) -> PackedMatrix:
    """d, m: [N, nb]; qs: [N, nb, 16] bytes in GGUF order (value j low nibble, value j+16 high nibble)."""
    n, nb = d.shape
    _check_shape(n, nb * QK)
    t = n // NR
    d_t = _half(d).reshape(t, NR, nb).transpose(0, 2, 1)
    m_t = _half(m).reshape(t, NR, nb).transpose(0, 2, 1)
    q_t = qs.astype(np.uint8).reshape(t, NR, nb, 16).transpose(0, 2, 3, 1).reshape(t, nb, 16 * NR)
    blocks = np.concatenate([_bytes(d_t), _bytes(m_t), q_t], axis=-1)  # [T, nb, 320]
    return _packed("q4_1", n, nb * QK, blocks.reshape(-1), bias)


# (bytes of scales, quant bytes) per tile block of the quantised formats
_BLOCK_LAYOUT = {
    "q8_0": (Q8_0_QS, Q8_0_TILE_BLOCK - Q8_0_QS),
    "q4_1": (Q4_1_QS, Q4_1_TILE_BLOCK - Q4_1_QS),
    "q4_0": (32, 256),  # csrc/gemm_formats.h FmtQ4_0: float16 d[16], then its nibbles in words (gemm_nibble32.h)
}
# Block formats whose float layout keeps the nibbles in words of 4 rows per lane, as the int8 layout does
_NIBBLE_WORDS = ("q4_0", "q4_k")
# Block formats of 4 low bits and high bits whose int8 layout adds the high bits' regrouping
_HIGH_BIT_FORMATS = ("q5_0", "q5_1", "q4_k", "q5_k", "q6_k")
# the formats the int8-activation GEMM takes (csrc/gemm_i8.cpp); Q2_K, Q3_K and the float formats are refused
INT8_FORMATS = (*_BLOCK_LAYOUT, *_HIGH_BIT_FORMATS)


def for_int8_activations(m: PackedMatrix) -> PackedMatrix:
    """The same matrix with each tile block's quants regrouped for int8 activations (module docstring)."""
    if m.format not in INT8_FORMATS:
        raise ValueError(f"int8 activations need {', '.join(INT8_FORMATS)} weights, not {m.format}")
    if m.next is not None:
        m = dataclasses.replace(m, next=for_int8_activations(m.next))
    if m.activations == "int8":
        return m
    if m.bias is not None:  # its own copy: a view would keep the whole float layout's mapping alive
        m = dataclasses.replace(m, bias=m.bias.clone())
    if m.format in _NIBBLE_WORDS:  # already in words of 4 rows per lane (a copy: not the float layout's memory)
        return dataclasses.replace(m, data=m.data.clone(), activations="int8")
    if m.format in _HIGH_BIT_FORMATS:
        return dataclasses.replace(m, data=torch.from_numpy(_int8_high_bit_blocks(m)), activations="int8")
    head, quants = _BLOCK_LAYOUT[m.format]
    blocks = m.data.numpy().reshape(-1, head + quants)  # [tiles * nb, block bytes]
    q = blocks[:, head:].reshape(-1, quants // 64, 4, NR)  # [blocks, group, byte j, lane]
    regrouped = np.concatenate([blocks[:, :head], q.transpose(0, 1, 3, 2).reshape(-1, quants)], axis=1)
    return dataclasses.replace(m, data=torch.from_numpy(regrouped.reshape(-1)), activations="int8")


def _int8_high_bit_blocks(m: PackedMatrix) -> np.ndarray:
    """A q5_0/q5_1/q5_k/q6_k matrix's bytes in the int8 layout (module docstring; csrc/gemm_i8.cpp)."""
    size, _, _, hi_bits, _ = BLOCK_FORMATS[m.format]
    chunks, chunk = size // 32, 64 * (4 + hi_bits)
    blocks = m.data.numpy().reshape((m.n // NR) * (m.k // size), -1)  # [tile blocks, bytes]
    head = blocks.shape[1] - chunks * chunk  # the scales, kept
    c = blocks[:, head:].reshape(-1, chunks, chunk)
    if m.format == "q6_k":  # from its grouped quants, the rows of the other formats' layout
        q = _ungrouped6(c)
        c = np.concatenate([_low_rows(q & 15, 4), _high_rows(q >> 4, 2)], axis=-1)
    nibbles = _nibble_words(c[..., :256])  # [.., g, lane, j]: row 4g + j
    fields = 8 // hi_bits
    rows = (
        c[..., 256:].reshape(-1, chunks, 32 // fields, 1, NR) >> (hi_bits * np.arange(fields, dtype=np.uint8))[:, None]
    )
    high = (rows & ((1 << hi_bits) - 1)).reshape(-1, chunks, 2, 4, 4, NR)  # [.., u, g, j, lane]: value 16u + 4g + j
    if hi_bits == 1:  # bit g + 4u
        shifts = (np.arange(4, dtype=np.uint8)[None, :] + np.array([[0], [4]], np.uint8))[..., None, None]
        hv = (high << shifts).sum(axis=(2, 3), dtype=np.uint8)[:, :, None]  # [.., 1, j, lane]
    else:  # [.., u, j, lane], bits 2g
        hv = (high << (2 * np.arange(4, dtype=np.uint8))[:, None, None]).sum(axis=3, dtype=np.uint8)
    parts = [nibbles.reshape(-1, chunks, 256), hv.transpose(0, 1, 2, 4, 3).reshape(-1, chunks, 64 * hi_bits)]
    quants = np.concatenate(parts, axis=-1).reshape(blocks.shape[0], -1)
    return np.ascontiguousarray(np.concatenate([blocks[:, :head], quants], axis=1).reshape(-1))


def _half(scales: np.ndarray) -> np.ndarray:
    """Scales as float16; they must be float16 values already (GGUF's, or quantize_*'s), so nothing rounds here."""
    half = scales.astype(np.float16)
    if not np.array_equal(half.astype(np.float32), scales.astype(np.float32), equal_nan=True):
        raise ValueError("scales must be float16 values (quantize_q8_0 / quantize_q4_1 round them)")
    return half


def _to_half(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest float16 value (returned as float32); beyond its range is an error."""
    half = x.astype(np.float16)
    if not np.isfinite(half[np.isfinite(x)]).all():
        raise ValueError("a block scale is beyond float16's range (65504): these weights cannot be quantised")
    return half.astype(np.float32)


def _packed(fmt: str, n: int, k: int, flat: np.ndarray, bias: np.ndarray | None) -> PackedMatrix:
    b = None if bias is None else torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    return PackedMatrix(fmt, n, k, torch.from_numpy(np.ascontiguousarray(flat)), b)


# --- GGUF blocks (rows of raw bytes as stored in the file)


def split_gguf_q8_0(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """raw [N, nb*34] -> d [N, nb] float32, q [N, nb, 32] int8."""
    blocks = np.ascontiguousarray(raw).reshape(raw.shape[0], -1, 34)
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    return d, blocks[..., 2:].copy().view(np.int8)


def split_gguf_q4_1(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """raw [N, nb*20] -> d, m [N, nb] float32, qs [N, nb, 16] uint8."""
    blocks = np.ascontiguousarray(raw).reshape(raw.shape[0], -1, 20)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    return d, m, blocks[..., 4:20].copy()


# --- quantising float weights (quantise-on-load)


def quantize_q8_0(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w [N, K] -> d [N, nb], q [N, nb, 32]: d = max|w| / 127 rounded to float16, q = round-half-even(w / d)
    clipped to [-127, 127]."""
    blocks = w.astype(np.float32).reshape(w.shape[0], -1, QK)
    d = _to_half((np.abs(blocks).max(-1) / np.float32(127)).astype(np.float32))
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = np.clip(np.rint(blocks * inv[..., None]), -127, 127).astype(np.int8)
    return d, q


def quantize_q4_1(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """w [N, K] -> d, m [N, nb], qs [N, nb, 16]: m = min and d = (max - min) / 15, each rounded to float16;
    q = round((w - m) / d) clipped to [0, 15]."""
    blocks = w.astype(np.float32).reshape(w.shape[0], -1, QK)
    lo, hi = _to_half(blocks.min(-1)), blocks.max(-1)
    d = _to_half(((hi - lo) / np.float32(15)).astype(np.float32))
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = np.clip(np.rint((blocks - lo[..., None]) * inv[..., None]), 0, 15).astype(np.uint8)
    qs = (q[..., :16] | (q[..., 16:] << 4)).astype(np.uint8)
    return d, lo, qs


def dequantize_q8_0(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (d[..., None] * q.astype(np.float32)).reshape(d.shape[0], -1)


def dequantize_q4_1(d: np.ndarray, m: np.ndarray, qs: np.ndarray) -> np.ndarray:
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)  # [N, nb, 32]
    values: np.ndarray = (d[..., None] * q + m[..., None]).reshape(d.shape[0], -1)
    return values


def pack_from_float(w: np.ndarray, fmt: str, bias: np.ndarray | None = None) -> PackedMatrix:
    """Pack float weights [N, K] as `fmt`, quantising when it is not f32."""
    if fmt == "f32":
        return pack_f32(w, bias)
    if fmt == "q8_0":
        return pack_q8_0(*quantize_q8_0(w), bias=bias)
    if fmt == "q4_1":
        return pack_q4_1(*quantize_q4_1(w), bias=bias)
    raise ValueError(f"weight format {fmt!r}: allowed {', '.join(PRECISION)}")


def _low_rows(v: np.ndarray, bits: int) -> np.ndarray:
    """Values [..., 32, 16 lanes] of `bits` bits -> bytes [..., rows * 16]: value j in row j % rows, at bit
    bits * (j // rows), rows = 4 * bits (for 4 bits q4_1's nibbles). See csrc/gemm_blocks.h."""
    fields = 8 // bits
    v = v.astype(np.uint8).reshape(*v.shape[:-2], fields, 32 // fields, NR)
    out = sum(v[..., i, :, :] << np.uint8(bits * i) for i in range(fields))
    return np.ascontiguousarray(out, dtype=np.uint8).reshape(*v.shape[:-3], -1)


def _high_rows(v: np.ndarray, bits: int) -> np.ndarray:
    """Values [..., 32, 16 lanes] of `bits` bits -> bytes [..., 4 * bits * 16]: value j in row j // (8 // bits),
    at bit bits * (j % (8 // bits)). See csrc/gemm_blocks.h."""
    fields = 8 // bits
    v = v.astype(np.uint8).reshape(*v.shape[:-2], 32 // fields, fields, NR)
    out = sum(v[..., :, i, :] << np.uint8(bits * i) for i in range(fields))
    return np.ascontiguousarray(out, dtype=np.uint8).reshape(*v.shape[:-3], -1)


def _nibble_words(rows: np.ndarray) -> np.ndarray:
    """4-bit rows [..., 256] (_low_rows) -> words of 4 rows per lane [..., 4 groups, 16 lanes, 4 rows]: the int8
    kernels' layout, and Q4_K's (csrc/gemm_nibble32.h)."""
    return np.ascontiguousarray(rows.reshape(*rows.shape[:-1], 4, 4, NR).swapaxes(-1, -2)).reshape(rows.shape)


def _grouped6(q: np.ndarray) -> np.ndarray:
    """Q6_K's 6-bit values [..., 32, 16 lanes] -> bytes [..., 384]: group g (values 4g .. 4g + 3) at 48 g, column
    l's 24 bits at 48 g + 3 l, value 4g + i in bits 6i as q - 32 in 6-bit two's complement. See csrc/gemm_group6.h."""
    f = (q.astype(np.uint32) ^ 32).reshape(*q.shape[:-2], 8, 4, NR)
    bits = f[..., 0, :] | f[..., 1, :] << 6 | f[..., 2, :] << 12 | f[..., 3, :] << 18  # [..., group, lane]
    out = np.stack([bits & 0xFF, bits >> 8 & 0xFF, bits >> 16], axis=-1).astype(np.uint8)
    return out.reshape(*q.shape[:-2], 48 * 8)


def _ungrouped6(c: np.ndarray) -> np.ndarray:
    """_grouped6's bytes [..., 384] -> the values [..., 32, 16 lanes] (uint8)."""
    b = c.reshape(*c.shape[:-1], 8, NR, 3).astype(np.uint32)
    bits = b[..., 0] | b[..., 1] << 8 | b[..., 2] << 16  # [..., group, lane]
    f = (bits[..., None, :] >> (6 * np.arange(4, dtype=np.uint32))[:, None]) & 63  # [..., group, i, lane]
    return (f ^ 32).astype(np.uint8).reshape(*c.shape[:-1], 32, NR)


def scale_field_rows(fmt: str, sc: np.ndarray, mn: np.ndarray | None) -> np.ndarray:
    """A K-type's sub-block scales sc [..., S/L] (and minima mn) -> its scale fields' byte rows [..., rows] of
    one column (module docstring: SCALE_FIELDS)."""
    bits, bias = SCALE_FIELDS[fmt]
    fields = sc if mn is None else np.stack([sc, mn], axis=-1).reshape(*sc.shape[:-1], -1)  # [..., FIELDS]
    u = (fields.astype(np.int16) + bias).astype(np.uint8)
    if bits < 8 and (u >> bits).any():
        raise ValueError(f"{fmt}: a sub-block scale or minimum beyond its {bits} bits")
    if bits == 8:
        return u
    lo = (u[..., 0::2] & 0x0F) | ((u[..., 1::2] & 0x0F) << 4)  # field i in row i // 2, bits 4 (i % 2)
    if bits == 4:
        return lo
    top = (u >> 4).reshape(*u.shape[:-1], -1, 4) << np.array([0, 2, 4, 6], np.uint8)  # field i: row i // 4
    return np.concatenate([lo, np.bitwise_or.reduce(top, axis=-1)], axis=-1)


def pack_blocks(
    fmt: str,
    d: np.ndarray,
    m: np.ndarray | None,
    sc: np.ndarray | None,
    mn: np.ndarray | None,
    q: np.ndarray,
    bias: np.ndarray | None = None,
) -> PackedMatrix:
    """unpack_gguf_blocks' fields -> the tile layout of csrc/gemm_blocks.h (module docstring)."""
    size, _, lo_bits, hi_bits, ktype = BLOCK_FORMATS[fmt]
    n, k = q.shape
    _check_shape(n, k)
    if k % size:
        raise ValueError(f"{fmt} matrix [{n}, {k}]: rows must be whole blocks of {size}")
    t, nb = n // NR, k // size

    def per_lane(a: np.ndarray, dtype: type[np.generic]) -> np.ndarray:  # [N, nb, ...] -> bytes [T, nb, ... x 16 lanes]
        a = a.astype(dtype).reshape(t, NR, nb, -1).transpose(0, 2, 3, 1)
        return _bytes(a.reshape(t, nb, -1))

    head = [per_lane(d, np.float16)] + ([per_lane(m, np.float16)] if m is not None else [])
    if ktype:
        assert sc is not None  # a K-type's blocks carry sub-block scales
        head.append(per_lane(scale_field_rows(fmt, sc, mn), np.uint8))
    qt = q.reshape(t, NR, nb, size // 32, 32).transpose(0, 2, 3, 4, 1)  # [T, nb, chunk, value, lane]
    if fmt == "q6_k":
        chunks = _grouped6(qt).reshape(t, nb, -1)
    elif fmt in _NIBBLE_WORDS:
        chunks = _nibble_words(_low_rows(qt, 4)).reshape(t, nb, -1)
    else:
        chunk = [_low_rows(qt & ((1 << lo_bits) - 1), lo_bits)]
        if hi_bits:
            chunk.append(_high_rows(qt >> lo_bits, hi_bits))
        chunks = np.concatenate(chunk, axis=-1).reshape(t, nb, -1)
    blocks = np.concatenate([*head, chunks], axis=-1)  # [T, nb, block bytes]
    return _packed(fmt, n, k, blocks.reshape(-1), bias)


def pack_h16(bits: np.ndarray, fmt: str, bias: np.ndarray | None = None) -> PackedMatrix:
    """float16 or bfloat16 weights [N, K] (their 16-bit patterns) -> uint16 tiles w[K][16]."""
    n, k = bits.shape
    _check_shape(n, k)
    tiles = np.ascontiguousarray(bits.view(np.uint16).reshape(n // NR, NR, k).transpose(0, 2, 1))
    return _packed(fmt, n, k, tiles.view(np.uint8).reshape(-1), bias)


def pack_stored(fmt: str, rows: np.ndarray, bias: np.ndarray | None = None) -> PackedMatrix:
    """A matrix as a GGUF file stores it (gguf_tensors.StoredTensor.rows) packed in its own format."""
    if fmt == "f32":
        return pack_f32(rows.astype(np.float32), bias)
    if fmt in ("f16", "bf16"):
        return pack_h16(rows, fmt, bias)
    if fmt == "q8_0":
        return pack_q8_0(*split_gguf_q8_0(rows), bias=bias)
    if fmt == "q4_1":
        return pack_q4_1(*split_gguf_q4_1(rows), bias=bias)
    if fmt in BLOCK_FORMATS:
        fields = unpack_gguf_blocks(rows, fmt)  # d and q always set; m, sc, mn where the format has them
        return pack_blocks(fmt, **fields, bias=bias)  # type: ignore[arg-type]
    raise ValueError(f"weight format {fmt!r}: the kernels take {', '.join(STORED_FORMATS)}")


def save_packed(path: str | os.PathLike[str], packed: dict[str, PackedMatrix], weight_format: str) -> None:
    """Write packed matrices to a safetensors file (atomically), with their formats as metadata."""
    import json
    import os

    from safetensors.torch import save_file

    tensors, meta = {}, {}
    for base, chain in packed.items():
        for i, m in enumerate(chain.parts()):  # a chain's parts: name, name#1, name#2, ...
            name = f"{base}#{i}" if i else base
            tensors[name] = m.data
            if m.bias is not None:
                tensors[name + ".bias"] = m.bias
            meta[name] = [m.format, m.n, m.k]
    tmp = f"{path}.tmp{os.getpid()}"
    save_file(tensors, tmp, metadata={"weight_format": weight_format, "matrices": json.dumps(meta)})
    os.replace(tmp, path)


def load_packed(path: str | os.PathLike[str]) -> tuple[dict[str, PackedMatrix], str]:
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        shapes = json.loads(meta["matrices"])
        names = set(fh.keys())
        parts = {
            name: PackedMatrix(
                fmt, n, k, fh.get_tensor(name), fh.get_tensor(name + ".bias") if name + ".bias" in names else None
            )
            for name, (fmt, n, k) in shapes.items()
        }
    packed = {name: m for name, m in parts.items() if "#" not in name}
    for name in sorted((n for n in parts if "#" in n), key=lambda n: int(n.rsplit("#", 1)[1]), reverse=True):
        base, i = name.rsplit("#", 1)
        prev = packed[base] if i == "1" else parts[f"{base}#{int(i) - 1}"]
        prev.next = parts[name]
    return packed, meta["weight_format"]
