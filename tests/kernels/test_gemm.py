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


@pytest.mark.parametrize("fmt,int8", [("f32", False), ("q8_0", False), ("q4_1", False), ("q8_0", True), ("q4_1", True)])
def test_bias_is_added_per_column(kernels_for, fmt, int8):
    """Every path (one row, a few, the interleaved many; float32 and int8 activations) adds the bias."""
    w = random_weights(192, 576, seed=3)
    bias = np.linspace(-1, 1, 192).astype(np.float32)
    x = torch.randn(17, 576)
    packed = [packing.pack_from_float(w, fmt, b) for b in (bias, None)]
    if int8:
        packed = [packing.for_int8_activations(m) for m in packed]
    for m in (1, 3, 17):
        with_bias, without = (kernels_for().gemm(p.desc(), x[:m]) for p in packed)
        assert torch.equal(with_bias, without + torch.from_numpy(bias)), f"{m} rows"


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
    w = random_weights(960, 576, seed=7)
    matrix = packing.pack_from_float(w, fmt).desc()
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((40, 576)).astype(np.float32))
    _assert_every_isa_agrees_at_every_row_count(kernels_for, matrix, x)


def _assert_every_isa_agrees_at_every_row_count(kernels_for, matrix, x: torch.Tensor) -> None:
    from seedstream.server.kernels import available_isas

    isas = available_isas()
    assert len(isas) >= 2, "at least one SIMD build and the scalar reference"
    for m in (1, 2, 3, 4, 5, 7, 9, 12, 16, 17, 25, 32, 40):
        outs = {isa: kernels_for(isa=isa).gemm(matrix, x[:m]) for isa in isas}
        for isa, got in outs.items():
            assert torch.equal(got, outs[isas[0]]), f"M={m}: {isa} differs from {isas[0]}"


def test_the_weights_setting_offers_exactly_the_packed_formats():
    from seedstream.server.settings import WEIGHT_FORMATS

    assert WEIGHT_FORMATS == ("auto", *packing.PRECISION)


# --- int8 activations (act SSK_ACT_I8, csrc/gemm_i8.cpp)

INT8_FORMATS = ("q8_0", "q4_1")


def int8_reference(x: np.ndarray, w: np.ndarray, fmt: str) -> np.ndarray:
    """The int8-activation semantics in float64: each 32-block of a row rounded to int8 with scale
    max|x| / 127, then multiplied with the packed weights (d * q + min) exactly."""
    blocks = x.astype(np.float32).reshape(x.shape[0], -1, 32)
    amax = np.abs(blocks).max(-1, keepdims=True)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax > 0)
    a = np.clip(np.rint(blocks * inv), -127, 127)  # float32 products, rounded half to even, as the kernel
    xq = (a * (amax.astype(np.float64) / 127)).reshape(x.shape)
    return xq @ reference_weights(w, fmt).astype(np.float64).T


@pytest.mark.parametrize("fmt", INT8_FORMATS)
@pytest.mark.parametrize("n,k", MODEL_SHAPES)
def test_int8_activations_row_bits_do_not_depend_on_row_count_position_or_threads(kernels_for, fmt, n, k):
    w = random_weights(n, k, seed=n + k)
    matrix = packing.for_int8_activations(packing.pack_from_float(w, fmt)).desc()
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((max(ROW_COUNTS), k)).astype(np.float32))
    full = kernels_for(threads=2).gemm(matrix, x)
    for m in ROW_COUNTS:
        assert torch.equal(kernels_for(threads=2).gemm(matrix, x[:m]), full[:m]), f"M={m}: row count changed bits"
        if m < 64:
            shifted = kernels_for(threads=1).gemm(matrix, torch.cat([x[64 : 64 + m], x[:m]]))
            assert torch.equal(shifted[m:], full[:m]), f"M={m}: a row's bits changed with its position"
    for i in (0, 3, 16, 64, 511):
        assert torch.equal(kernels_for(threads=1).gemm(matrix, x[i : i + 1])[0], full[i]), f"row {i} alone differs"


@pytest.mark.parametrize("fmt", INT8_FORMATS)
def test_int8_activations_match_their_float64_reference(kernels_for, fmt):
    n, k = 576, 1536
    w = random_weights(n, k, seed=7)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((9, k)).astype(np.float32) * np.where(rng.random(k) > 0.97, 30, 1).astype(np.float32)
    x[3, 64:96] = 0  # an all-zero block
    matrix = packing.for_int8_activations(packing.pack_from_float(w, fmt)).desc()
    got = kernels_for().gemm(matrix, torch.from_numpy(x)).double().numpy()
    want = int8_reference(x, w, fmt)
    # integer block sums are exact: only the float32 steps per block (48 of them) round
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    exact = x.astype(np.float64) @ reference_weights(w, fmt).astype(np.float64).T
    assert np.abs(got - exact).max() > 1e-4 * np.abs(exact).max(), "the inputs really are quantised"


@pytest.mark.parametrize("fmt", INT8_FORMATS)
def test_int8_activations_keep_nan_and_infinity_in_their_row(kernels_for, fmt):
    w = random_weights(64, 96, seed=4)
    matrix = packing.for_int8_activations(packing.pack_from_float(w, fmt)).desc()
    x = torch.randn(3, 96)
    x[0, 5], x[2, 70] = float("nan"), float("inf")
    y = kernels_for().gemm(matrix, x)
    assert torch.isnan(y[0]).all() and torch.isnan(y[2]).all()
    assert torch.isfinite(y[1]).all() and torch.equal(y[1], kernels_for().gemm(matrix, x[1:2])[0])


@pytest.mark.parametrize("fmt", INT8_FORMATS)
def test_int8_layout_holds_the_same_weights(kernels_for, fmt):
    w = random_weights(64, 96 * 2, seed=5)
    plain = packing.pack_from_float(w, fmt)
    regrouped = packing.for_int8_activations(plain)
    assert regrouped.nbytes == plain.nbytes and regrouped.activations == "int8"
    for row in (0, 15, 16, 63):
        assert torch.equal(
            kernels_for().dequant_row(regrouped.desc(), row), kernels_for().dequant_row(plain.desc(), row)
        )
    with pytest.raises(ValueError, match="int8 activations need q8_0, q4_1, q4_0, .*, not f32"):
        packing.for_int8_activations(packing.pack_from_float(w, "f32"))


@pytest.mark.parametrize("fmt", INT8_FORMATS)
def test_int8_activations_every_instruction_set_gives_the_same_bits(kernels_for, fmt):
    """AVX-512 (vpdpbusd), AVX2 (vpmaddubsw) and the scalar build compute the same integer sums."""
    w = random_weights(960, 576, seed=7)
    matrix = packing.for_int8_activations(packing.pack_from_float(w, fmt)).desc()
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((40, 576)).astype(np.float32))
    x[5, :32] *= 1e6  # blocks near the int8 range's ends
    _assert_every_isa_agrees_at_every_row_count(kernels_for, matrix, x)


def test_int8_activations_take_q8_0_weights_of_minus_128(kernels_for):
    """GGUF's Q8_0 allows -128 (our quantiser stops at -127): |w| = 128 is where AVX2's 16-bit pair sums
    are closest to saturating, and AVX-512's unsigned offset wraps to 0."""
    from seedstream.server.kernels import available_isas

    rng = np.random.default_rng(9)
    q = rng.integers(-128, 128, size=(64, 6, 32)).astype(np.int8)
    q[:, :, :4] = -128
    d = np.full((64, 6), 2.0**-7, dtype=np.float32)  # a float16 value
    matrix = packing.for_int8_activations(packing.pack_q8_0(d, q)).desc()
    x = torch.from_numpy(rng.standard_normal((5, 192)).astype(np.float32))
    x[:, ::3] = x[:, ::3].abs() * 10  # activations of +-127 beside weights of -128
    want = int8_reference(x.numpy(), packing.dequantize_q8_0(d, q), "f32")
    for isa in available_isas():
        got = kernels_for(isa=isa).gemm(matrix, x).double().numpy()
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), isa
