"""The packed block formats take no more bytes than the file's blocks, and the K-types' packed sub-block scales
(csrc/gemm_scales.h) decode to the values gguf reads, in Python and in the kernels, for every bit pattern."""

import gguf.quants
import numpy as np
import pytest
import torch
import write_gguf  # scripts/: the project's GGUF writer (and K-quantiser)

from seedstream.server.kernels import available_isas, packing
from seedstream.server.kernels.gguf_blocks import unpack_gguf_blocks

K_TYPES = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
# GGUF block bytes, and where a K block's float16 d (and dmin) sit
BLOCK_BYTES = {"q4_0": 18, "q5_0": 22, "q5_1": 24, "q2_k": 84, "q3_k": 110, "q4_k": 144, "q5_k": 176, "q6_k": 210}
SCALE_AT = {"q2_k": (80, 82), "q3_k": (108,), "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,)}


def random_blocks(fmt: str, n: int, k: int, seed: int) -> np.ndarray:
    """Rows of random block bytes (every scale and quant bit pattern), with finite float16 d and dmin."""
    rng = np.random.default_rng(seed)
    size = BLOCK_BYTES[fmt]
    rows = rng.integers(0, 256, (n, k // 256, size), dtype=np.uint8)
    for at in SCALE_AT[fmt]:
        half = (rng.uniform(1e-3, 1e-2, (n, k // 256)) * rng.choice([-1, 1], (n, k // 256))).astype(np.float16)
        rows[..., at : at + 2] = half[..., None].view(np.uint8)
    return rows.reshape(n, -1)


def packed_fields(m: packing.PackedMatrix) -> np.ndarray:
    """The scale fields' bytes of every column and block of a packed K-type matrix [N, nb, bytes a column]."""
    bits, _ = packing.SCALE_FIELDS[m.format]
    size, sub, _, _, _ = packing.BLOCK_FORMATS[m.format]
    minimum = m.format in ("q2_k", "q4_k", "q5_k")
    at, rows = 32 * (2 if minimum else 1), (size // sub) * (2 if minimum else 1) * bits // 8
    t, nb = m.n // packing.NR, m.k // size
    blocks = m.data.numpy().reshape(t, nb, -1)[..., at : at + 16 * rows].reshape(t, nb, rows, packing.NR)
    return blocks.transpose(0, 3, 1, 2).reshape(m.n, nb, rows)


def decode_fields(fmt: str, rows: np.ndarray) -> np.ndarray:
    """The layout of csrc/gemm_scales.h read back: bytes [..., rows] -> field values [..., FIELDS] (int)."""
    bits, bias = packing.SCALE_FIELDS[fmt]
    if bits == 8:
        return rows.view(np.int8).astype(np.int64)
    fields = rows.shape[-1] * 8 // bits
    lo = rows[..., : fields // 2]
    v = np.stack([lo & 0x0F, lo >> 4], axis=-1).reshape(*rows.shape[:-1], fields).astype(np.int64)
    if bits == 6:
        hi = rows[..., fields // 2 :, None] >> np.array([0, 2, 4, 6], np.uint8)
        v |= (hi & 3).reshape(*rows.shape[:-1], fields).astype(np.int64) << 4
    return v - bias


def gguf_scales(fmt: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The sub-block scales (and minima) [N, nb, S/L] of GGUF rows: gguf.quants' own reading for Q4_K / Q5_K,
    the project's block reader (checked against gguf.quants' dequantisation in test_formats.py) for the others."""
    fields = unpack_gguf_blocks(rows, fmt)
    sc, mn = fields["sc"], fields["mn"]
    assert sc is not None
    if fmt in ("q4_k", "q5_k"):
        n = rows.shape[0]
        scales = rows.reshape(-1, BLOCK_BYTES[fmt])[:, 4:16]
        ref_sc, ref_mn = gguf.quants.Q4_K.get_scale_min(scales)
        np.testing.assert_array_equal(sc, ref_sc.reshape(n, -1, 8))
        np.testing.assert_array_equal(mn, ref_mn.reshape(n, -1, 8))
    return sc.astype(np.int64), None if mn is None else mn.astype(np.int64)


@pytest.mark.parametrize("fmt", sorted(packing.BLOCK_FORMATS))
def test_packed_block_formats_take_no_more_bytes_than_the_file(fmt):
    n, k = 32, 512
    w = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32) * 0.05
    rows = write_gguf.encode(w, fmt)
    packed = packing.pack_stored(fmt, rows)
    assert packed.nbytes <= rows.nbytes, f"{fmt}: packed {packed.nbytes} bytes, the file's blocks {rows.nbytes}"
    if fmt in packing.INT8_FORMATS:
        assert packing.for_int8_activations(packed).nbytes == packed.nbytes


@pytest.mark.parametrize("fmt", K_TYPES)
@pytest.mark.parametrize("source", ("quantised", "random bytes"))
def test_packed_scales_decode_to_the_files_values(fmt, source):
    n, k = 32, 512
    if source == "quantised":
        w = np.random.default_rng(1).standard_normal((n, k)).astype(np.float32) * 0.05
        rows = write_gguf.encode(w, fmt)
    else:
        rows = random_blocks(fmt, n, k, seed=2)
    sc, mn = gguf_scales(fmt, rows)
    packed = packing.pack_stored(fmt, rows)
    fields = decode_fields(fmt, packed_fields(packed))
    want = sc if mn is None else np.stack([sc, mn], axis=-1).reshape(n, k // 256, -1)  # scale, minimum per sub-block
    np.testing.assert_array_equal(fields, want)
    if fmt in packing.INT8_FORMATS:  # the int8 layout keeps the scale bytes where they are
        regrouped = packing.for_int8_activations(packed)
        np.testing.assert_array_equal(packed_fields(regrouped), packed_fields(packed))


@pytest.mark.parametrize("fmt", K_TYPES)
def test_kernels_read_every_scale_bit_pattern_as_gguf_does(kernels_for, fmt):
    """Random block bytes: the rows the kernels dequantise are gguf's values; the GEMM at 1, 8 and 40 rows (the
    register, interleaved and many-row kernels) matches them in float64 on every build, with the same bits."""
    n, k = 48, 512
    rows = random_blocks(fmt, n, k, seed=3)
    values = write_gguf.decode(rows, fmt).astype(np.float64)
    matrix = packing.pack_stored(fmt, rows)
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((40, k)).astype(np.float32))
    want = x.double().numpy() @ values.T
    bound = np.abs(x.double().numpy()) @ np.abs(values).T * 2e-6 + 1e-30
    full = kernels_for().gemm(matrix.desc(), x)
    assert (np.abs(full.double().numpy() - want) <= bound).all(), f"{fmt}: beyond float32 rounding"
    for isa in available_isas():
        kernels = kernels_for(isa=isa)
        for m in (1, 8, 40):
            assert torch.equal(kernels.gemm(matrix.desc(), x[:m]), full[:m]), f"{fmt} M={m} on {isa}"
        for row in (0, 17, n - 1):
            np.testing.assert_allclose(kernels.dequant_row(matrix.desc(), row).double().numpy(), values[row], rtol=1e-6)
            if fmt in packing.INT8_FORMATS:
                int8 = packing.for_int8_activations(matrix).desc()
                np.testing.assert_allclose(kernels.dequant_row(int8, row).double().numpy(), values[row], rtol=1e-6)
