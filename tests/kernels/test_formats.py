"""GGUF block formats kept as stored (Q4_0 ... Q6_K, Q2_K, Q3_K, F16, BF16): packed from the file's own bytes, multiplied
by the kernels, checked against gguf's dequantisation in float64, for batch invariance and across builds."""

import numpy as np
import pytest
import torch
import write_gguf  # scripts/: the project's GGUF writer (and K-quantiser)

from seedstream.server.kernels import available_isas, packing

NEW_FORMATS = ("q4_0", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "f16", "bf16")
ROWS = (1, 3, 8, 33)


def stored(fmt: str, n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(the file's rows of a random [n, k] matrix written as fmt, the values gguf reads back, float64)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * 0.05 + rng.standard_normal((n, 1)) * 0.01).astype(np.float32)
    rows = write_gguf.encode(w, fmt)
    if fmt == "bf16":
        rows = np.ascontiguousarray(rows).view(np.uint16)  # gguf_tensors gives bf16 rows as uint16 [N, K]
    return rows, write_gguf.decode(np.ascontiguousarray(rows).view(np.uint8) if fmt == "bf16" else rows, fmt)


def inputs(m: int, k: int, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32))


@pytest.mark.parametrize("fmt", NEW_FORMATS)
def test_matches_gguf_dequantisation_in_float64(kernels_for, fmt):
    n, k = 48, 512
    rows, values = stored(fmt, n, k, seed=3)
    matrix = packing.pack_stored(fmt, rows).desc()
    x = inputs(max(ROWS), k)
    want = x.double().numpy() @ values.astype(np.float64).T
    bound = np.abs(x.double().numpy()) @ np.abs(values.astype(np.float64)).T * 2e-6 + 1e-30
    full = kernels_for().gemm(matrix, x)
    for m in ROWS:
        got = kernels_for().gemm(matrix, x[:m])
        assert torch.equal(got, full[:m]), f"{fmt} M={m}: a row's bits changed with the row count"
        err = np.abs(got.double().numpy() - want[:m])
        assert (err <= bound[:m]).all(), f"{fmt} M={m}: off by {err.max():.3g} (beyond float32 rounding)"
    # the dequantised rows (the embedding's lookup) are gguf's values
    for row in (0, 17, n - 1):
        got_row = kernels_for().dequant_row(matrix, row).double().numpy()
        np.testing.assert_allclose(got_row, values[row], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fmt", NEW_FORMATS)
def test_row_bits_do_not_depend_on_rows_position_threads_or_isa(kernels_for, fmt):
    n, k = 64, 768 if fmt not in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k") else 1024
    rows, _ = stored(fmt, n, k, seed=5)
    matrix = packing.pack_stored(fmt, rows).desc()
    x = inputs(66, k, seed=2)
    full = rows_keep_their_bits(kernels_for, matrix, x, fmt)
    for isa in available_isas()[1:]:
        other = kernels_for(isa=isa, threads=2)
        for m in (1, 3, 8, 33):
            assert torch.equal(other.gemm(matrix, x[:m]), full[:m]), f"{fmt} M={m}: {isa} differs"


@pytest.mark.parametrize("fmt", ("q4_0", "q5_0", "q2_k", "q4_k", "q6_k"))
def test_many_rows_of_several_tiles_keep_the_bits_of_one_row(kernels_for, fmt):
    """The block formats' many-row kernel takes every group of rows of up to 4 tiles at once: row counts across its
    group boundaries (6 rows a group on AVX2, 8 on the scalar build, 16 on AVX-512, the last group shorter) on 7
    tiles (a group of 4, then 3) give each row the bits it has alone, on every build."""
    n, k = 7 * 16, 512
    rows, _ = stored(fmt, n, k, seed=11)
    matrix = packing.pack_stored(fmt, rows).desc()
    x = inputs(100, k, seed=4)
    alone = torch.cat([kernels_for(threads=1).gemm(matrix, x[i : i + 1]) for i in range(100)])
    for isa in available_isas():
        for threads in (1, 2):
            for m in (7, 12, 13, 17, 18, 40, 100):
                got = kernels_for(isa=isa, threads=threads).gemm(matrix, x[:m])
                assert torch.equal(got, alone[:m]), f"{fmt} M={m}, {isa}, {threads} threads: differs from alone"


def test_q4_k_one_row_scaled_inputs_keep_the_bits_or_are_not_taken(kernels_for):
    """Q4_K's one-row kernel (AVX2) multiplies nibbles masked in place by inputs scaled by 2^-e (csrc/gemm_nibble32.h):
    the same products where the scaled inputs are exact. A row of tiny inputs (1e-35: scaled by 2^-24 they would be
    subnormal and lose bits) must take the exact expansion instead; either way a row alone has the bits it has
    among others (the kernels of 3 rows never scale) and on every build."""
    n, k = 16 * 16, 512  # 16 tiles: the one-row kernel takes 4 at a time, on 1 and on 2 threads
    rows, _ = stored("q4_k", n, k, seed=12)
    matrix = packing.pack_stored("q4_k", rows).desc()
    x = inputs(3, k, seed=6)
    x[1] *= 1e-35  # tiny throughout: its products decide the result's bits
    x[2, 3::32] = 1e-36  # a few tiny values among normal ones, at the nibbles scaled most
    for isa in available_isas():
        together = kernels_for(isa=isa, threads=1).gemm(matrix, x)
        assert torch.isfinite(together).all() and (together[1] != 0).any()
        for i in range(3):
            for threads in (1, 2):
                alone = kernels_for(isa=isa, threads=threads).gemm(matrix, x[i : i + 1])
                assert torch.equal(alone[0], together[i]), f"{isa}, {threads} threads, row {i}: one row's bits differ"
                assert torch.equal(alone, kernels_for(isa=available_isas()[-1]).gemm(matrix, x[i : i + 1])), isa


def rows_keep_their_bits(kernels_for, matrix, x: torch.Tensor, label: str) -> torch.Tensor:
    """The product of 66 rows x (2 threads); asserts that a row's bits do not change with the row count, its
    position or the thread count."""
    full = kernels_for(threads=2).gemm(matrix, x)
    for m in (1, 2, 3, 5, 8, 13, 33):
        shifted = kernels_for(threads=1).gemm(matrix, torch.cat([x[33 : 33 + m], x[:m]]))
        assert torch.equal(shifted[m:], full[:m]), f"{label} M={m}: a row's bits changed with its position"
    for i in (0, 7, 65):
        assert torch.equal(kernels_for(threads=1).gemm(matrix, x[i : i + 1])[0], full[i]), f"{label} row {i}"
    return full


def test_int8_activations_take_q4_0_weights(kernels_for):
    """Q4_0 with --activations int8: per block the integer dot product less 8 A (the sum of the row's int8
    block), as the int8 scheme's float64 reference; a row's bits the same at any row count and on every build."""
    from .test_gemm import int8_reference

    rows, values = stored("q4_0", 64, 512, seed=9)
    matrix = packing.for_int8_activations(packing.pack_stored("q4_0", rows)).desc()
    x = inputs(33, 512, seed=4)
    full = kernels_for().gemm(matrix, x)
    want = int8_reference(x.numpy(), values, "f32")
    assert np.abs(full.double().numpy() - want).max() <= 1e-5 * np.abs(want).max()
    for m in (1, 2, 3, 8):
        assert torch.equal(kernels_for(threads=1).gemm(matrix, x[:m]), full[:m]), f"M={m}: row count changed bits"
    for isa in available_isas()[1:]:
        assert torch.equal(kernels_for(isa=isa).gemm(matrix, x), full), f"{isa} differs"


def test_a_chain_of_parts_in_different_formats_multiplies_each_in_its_own(kernels_for):
    k = 256
    parts = [(fmt, *stored(fmt, 32, k, seed=i)) for i, fmt in enumerate(("q4_k", "q6_k", "q8_0"))]
    packed = [packing.pack_stored(fmt, rows) for fmt, rows, _ in parts]
    packed[0].next, packed[1].next = packed[1], packed[2]
    x = inputs(5, k)
    got = kernels_for().gemm(packed[0].desc(), x)
    alone = [kernels_for().gemm(packing.pack_stored(fmt, rows).desc(), x) for fmt, rows, _ in parts]
    assert got.shape == (5, 96) and torch.equal(got, torch.cat(alone, dim=1))


def test_saved_chains_load_back(tmp_path):
    a = packing.pack_stored("q4_0", stored("q4_0", 16, 64, 1)[0])
    a.next = packing.pack_stored("f16", stored("f16", 32, 64, 2)[0])
    packing.save_packed(tmp_path / "p.safetensors", {"m": a}, "q4_0,f16")
    back, fmt = packing.load_packed(tmp_path / "p.safetensors")
    assert fmt == "q4_0,f16" and back["m"].formats == ["q4_0", "f16"] and back["m"].rows == 48
    assert torch.equal(back["m"].next.data, a.next.data)


MIX = ("q4_k", "q6_k", "q5_k", "q4_0", "q5_0", "q5_1", "q8_0", "q4_1", "f16", "bf16", "f32", "q2_k", "q3_k")


def _mixed_model():
    """A tiny llama whose matrices are each stored in another type, in turn (write_gguf's "mixed"): (the
    transformers model on the dequantised weights, its ModelConfig and state dict, the stored tensors)."""
    from seedstream.server.engine.gguf_tensors import StoredTensor

    arch_models = pytest.importorskip("arch_models")
    shape = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4)
    hf = arch_models.build_hf_model("llama-untied-vocab256", num_key_value_heads=2, head_dim=64, **shape)
    kept, i = {}, 0
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() != 2:
                continue
            fmt = MIX[i % len(MIX)]
            i += 1
            rows, values = _encode_param(p, fmt)
            kept[name] = StoredTensor(fmt, rows)
            p.copy_(torch.from_numpy(values))
    cfg, sd = arch_models.served_inputs(hf)
    assert set(kept) <= set(sd)
    return hf, cfg, sd, kept


def _encode_param(p: torch.Tensor, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    w = p.detach().float().numpy() * (4.0 if p.shape[1] == 256 else 2.0)  # sharp enough to tell formats apart
    rows = write_gguf.encode(w, fmt)
    if fmt == "bf16":
        return np.ascontiguousarray(rows).view(np.uint16), write_gguf.decode(rows, fmt)
    return rows, write_gguf.decode(rows, fmt)


def test_a_model_mixing_every_type_matches_transformers_on_the_dequantised_weights(kernels_for):
    from seedstream.server.engine.kernel_model import KernelModel, pack_model_weights, resolve_weight_format

    from .test_model_options import _prefill

    arch_models = pytest.importorskip("arch_models")
    hf, cfg, sd, stored = _mixed_model()
    fmt = resolve_weight_format("auto", stored)
    assert fmt == ",".join(sorted(set(MIX)))  # every type among the layers' matrices
    packed = pack_model_weights(cfg, sd, stored, fmt)
    assert packed["0.qkv"].formats == ["q6_k", "q5_k", "q4_0"]  # one chain, each part as stored
    model = KernelModel(cfg, sd, packed, fmt, kernels_for())
    assert model.version_tag.startswith(f"ssk2.{fmt}.attn32")
    ids = arch_models.prompt(40, cfg.vocab_size)
    got = _prefill(model, ids, len(ids))
    diff = (got.log_softmax(-1) - arch_models.hf_logprobs(hf, ids)).abs().max().item()
    assert diff <= 1e-4, f"max |logprob difference| {diff:.3g}"
    assert torch.equal(_prefill(model, ids, 1), got), "token-by-token decode differs from one prefill"
    for isa in available_isas()[1:]:
        other = KernelModel(cfg, sd, packed, fmt, kernels_for(isa=isa))
        assert torch.equal(_prefill(other, ids, 7), got), f"{isa} differs"
    with pytest.raises(
        ValueError, match="activations='int8' needs weights in q4_0, q4_1, q4_k, q5_0, .*; these include bf16"
    ):
        KernelModel(cfg, sd, packed, fmt, kernels_for(), activations="int8")


def test_unsupported_stored_types_are_refused_naming_the_supported_ones():
    from seedstream.server.engine.gguf_tensors import StoredTensor
    from seedstream.server.engine.kernel_model import resolve_weight_format

    with pytest.raises(ValueError, match="weight type iq4_xs: the kernels take bf16, f16, f32, q2_k, q3_k, q4_0"):
        resolve_weight_format("auto", {"w": StoredTensor("iq4_xs", np.zeros((16, 136), np.uint8))})
