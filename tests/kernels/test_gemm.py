"""GEMM kernels: one code path for any row count, checked bit for bit, and against a float64 reference."""

import numpy as np
import pytest
import torch

from seedstream.server.kernels import packing

from .conftest import FORMATS, MODEL_SHAPES, random_weights, reference_weights

ROW_COUNTS = (1, 2, 3, 4, 5, 8, 17, 32, 64, 65, 512)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n,k", MODEL_SHAPES)
def test_row_bits_do_not_depend_on_row_count_position_or_threads(kernels_for, fmt, n, k):
    w = random_weights(n, k, seed=n + k)
    matrix = packing.pack_from_float(w, fmt).desc()
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((max(ROW_COUNTS), k)).astype(np.float32))
    full = kernels_for(threads=2).gemm(matrix, x)  # [512, N]
    singles = {i: kernels_for(threads=1).gemm(matrix, x[i : i + 1]) for i in (0, 3, 16, 64, 511)}
    for m in ROW_COUNTS:
        rows = kernels_for(threads=2).gemm(matrix, x[:m])
        assert torch.equal(rows, full[:m]), f"M={m}: a row's bits changed with the row count"
        if m < 64:  # the same rows at another position of a larger batch
            shifted = kernels_for(threads=1).gemm(matrix, torch.cat([x[64 : 64 + m], x[:m]]))
            assert torch.equal(shifted[m:], full[:m]), f"M={m}: a row's bits changed with its position"
    for i, single in singles.items():
        assert torch.equal(single[0], full[i]), f"row {i}: alone (1 thread) differs from in a batch of 512 (2 threads)"


@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_dequantise_then_float64_reference(kernels_for, fmt):
    n, k = 576, 1536
    w = random_weights(n, k, seed=7)
    x = np.random.default_rng(2).standard_normal((9, k)).astype(np.float32)
    got = kernels_for().gemm(packing.pack_from_float(w, fmt).desc(), torch.from_numpy(x)).double().numpy()
    want = x.astype(np.float64) @ reference_weights(w, fmt).astype(np.float64).T
    scale = np.abs(want).max()
    # activations stay float32: only rounding differs from the float64 reference
    tolerance = 1e-5  # a sequential float32 sum over 1536 terms
    assert np.abs(got - want).max() <= tolerance * scale


def test_bias_is_added_per_column(kernels_for):
    w = random_weights(192, 576, seed=3)
    bias = np.linspace(-1, 1, 192).astype(np.float32)
    x = torch.randn(3, 576)
    with_bias = kernels_for().gemm(packing.pack_from_float(w, "q8_0", bias).desc(), x)
    without = kernels_for().gemm(packing.pack_from_float(w, "q8_0").desc(), x)
    assert torch.equal(with_bias, without + torch.from_numpy(bias))


@pytest.mark.parametrize("fmt", FORMATS)
def test_row_lookup_returns_the_packed_values(kernels_for, fmt):
    w = random_weights(64, 96 * 2, seed=5)
    matrix = packing.pack_from_float(w, fmt).desc()
    want = reference_weights(w, fmt)
    for row in (0, 15, 16, 63):
        assert np.array_equal(kernels_for().dequant_row(matrix, row).numpy(), want[row])


def test_shapes_the_kernels_cannot_take_are_refused():
    with pytest.raises(ValueError, match="multiple of 16"):
        packing.pack_from_float(random_weights(24, 64), "q8_0")
    with pytest.raises(ValueError, match="columns of 32"):
        packing.pack_from_float(random_weights(32, 48), "f32")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_instruction_set_gives_the_same_bits_at_every_row_count(kernels_for, fmt):
    """Each build has its own register tiling (rows per kernel call differ between AVX-512, AVX2 and the
    scalar build); every row count, through each build's paths, gives the same bits."""
    from seedstream.server.kernels import available_isas

    w = random_weights(960, 576, seed=7)
    matrix = packing.pack_from_float(w, fmt).desc()
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((40, 576)).astype(np.float32))
    isas = available_isas()
    assert len(isas) >= 2, "at least one SIMD build and the scalar reference"
    for m in (1, 2, 3, 4, 5, 7, 9, 12, 16, 17, 25, 32, 40):
        outs = {isa: kernels_for(isa=isa).gemm(matrix, x[:m]) for isa in isas}
        for isa, got in outs.items():
            assert torch.equal(got, outs[isas[0]]), f"M={m}: {isa} differs from {isas[0]}"


def test_the_weights_setting_offers_exactly_the_packed_formats():
    from seedstream.server.settings import WEIGHT_FORMATS

    assert WEIGHT_FORMATS == ("auto", *packing.PRECISION)
