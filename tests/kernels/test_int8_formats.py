"""int8 activations on the GGUF block formats beyond q8_0/q4_1/q4_0 (Q5_0, Q5_1, Q4_K, Q5_K, Q6_K; csrc/gemm_i8.cpp):
against the int8 scheme's float64 reference on gguf's own dequantised values, a row's bits independent of the
row count, position, threads and build, the embedding lookup unchanged, and a tiny model of each type."""

import dataclasses

import numpy as np
import pytest
import torch

from seedstream.server.kernels import available_isas, packing

from .test_formats import _encode_param, inputs, rows_keep_their_bits, stored
from .test_gemm import _assert_every_isa_agrees_at_every_row_count, int8_reference

NEW_INT8 = ("q5_0", "q5_1", "q4_k", "q5_k", "q6_k")
REFUSED = ("q2_k", "q3_k", "f16", "bf16", "f32")


def _int8(fmt: str, rows: np.ndarray) -> packing.PackedMatrix:
    return packing.for_int8_activations(packing.pack_stored(fmt, rows))


@pytest.mark.parametrize("fmt", NEW_INT8)
def test_matches_the_int8_reference_on_gguf_values(kernels_for, fmt):
    """Per (sub-)block an exact integer sum, then the float steps: within the existing int8 tests' bound of the
    float64 product of the int8-rounded inputs with the weights gguf reads; and really int8-rounded."""
    rows, values = stored(fmt, 48, 512, seed=3)
    x = inputs(33, 512, seed=4).numpy()
    x[:, ::37] *= 30  # a few large inputs: blocks whose other values round coarsely
    x[3, 64:96] = 0  # an all-zero block
    got = kernels_for().gemm(_int8(fmt, rows).desc(), torch.from_numpy(x)).double().numpy()
    want = int8_reference(x, values, "f32")
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    exact = x.astype(np.float64) @ values.astype(np.float64).T
    assert np.abs(got - exact).max() > 1e-4 * np.abs(exact).max(), "the inputs really are quantised"


@pytest.mark.parametrize("fmt", NEW_INT8)
def test_row_bits_do_not_depend_on_rows_position_threads_or_isa(kernels_for, fmt):
    rows, _ = stored(fmt, 64, 1024, seed=5)
    matrix = _int8(fmt, rows).desc()
    x = inputs(66, 1024, seed=2)
    x[5, :32] *= 1e6  # a block at the int8 range's ends
    rows_keep_their_bits(kernels_for, matrix, x, f"{fmt} int8")
    _assert_every_isa_agrees_at_every_row_count(kernels_for, matrix, x[:40])


@pytest.mark.parametrize("fmt", ("q4_0", *NEW_INT8))
def test_the_int8_layout_holds_the_same_weights(kernels_for, fmt):
    """Same bytes, regrouped; a row looked up (the token embedding) gives the float layout's values."""
    rows, values = stored(fmt, 32, 512, seed=6)
    plain = packing.pack_stored(fmt, rows)
    regrouped = packing.for_int8_activations(plain)
    assert regrouped.nbytes == plain.nbytes and regrouped.activations == "int8"
    for row in (0, 15, 16, 31):
        got = kernels_for().dequant_row(regrouped.desc(), row)
        assert torch.equal(got, kernels_for().dequant_row(plain.desc(), row)), f"{fmt} row {row}"
        np.testing.assert_allclose(got.double().numpy(), values[row], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fmt", ("q5_1", "q6_k"))
def test_nan_and_infinity_stay_in_their_row(kernels_for, fmt):
    rows, _ = stored(fmt, 32, 256, seed=8)
    matrix = _int8(fmt, rows).desc()
    x = inputs(3, 256)
    x[0, 5], x[2, 200] = float("nan"), float("inf")
    y = kernels_for().gemm(matrix, x)
    assert torch.isnan(y[0]).all() and torch.isnan(y[2]).all()
    assert torch.isfinite(y[1]).all() and torch.equal(y[1], kernels_for().gemm(matrix, x[1:2])[0])


@pytest.mark.parametrize("fmt", REFUSED)
def test_other_formats_are_refused_naming_the_ones_taken(fmt):
    rows, _ = stored(fmt, 16, 256, seed=1)
    with pytest.raises(
        ValueError, match=f"int8 activations need q8_0, q4_1, q4_0, q5_0, q5_1, q4_k, q5_k, q6_k weights, not {fmt}"
    ):
        packing.for_int8_activations(packing.pack_stored(fmt, rows))


def _tiny_model(kernels_for, fmt: str, isa=None):
    """A tiny llama (K-type shapes) whose every matrix is written in fmt by scripts/write_gguf.encode, with
    int8 activations."""
    from seedstream.server.engine.gguf_tensors import StoredTensor
    from seedstream.server.engine.kernel_model import KernelModel, pack_model_weights, resolve_weight_format

    arch_models = pytest.importorskip("arch_models")
    shape = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4)
    hf = arch_models.build_hf_model("llama-untied-vocab256", num_key_value_heads=2, head_dim=64, **shape)
    kept = {}
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 2:
                kept[name] = StoredTensor(fmt, _encode_param(p, fmt)[0])
    cfg, sd = arch_models.served_inputs(hf)
    weight_format = resolve_weight_format("auto", kept)
    packed = pack_model_weights(cfg, sd, kept, weight_format)
    return KernelModel(cfg, sd, packed, weight_format, kernels_for(isa=isa), activations="int8")


@pytest.mark.parametrize("fmt", NEW_INT8)
def test_a_tiny_model_of_each_type_keeps_its_bits(kernels_for, fmt):
    """Prefill of 33 rows == its first 8 == its first 1 == token-by-token decode, a sequence beside 7 others
    as alone, and every build the same."""
    from .test_model_options import _prefill

    arch_models = pytest.importorskip("arch_models")
    model = _tiny_model(kernels_for, fmt)
    assert model.weight_format == fmt and model.version_tag.startswith(f"ssk2.{fmt}.a8.")
    ids = arch_models.prompt(33, 256, seed=5)
    full = _prefill(model, ids, 33)
    assert torch.equal(_prefill(model, ids[:8], 8), full[:8]), "8 rows differ from the first 8 of 33"
    assert torch.equal(_prefill(model, ids[:1], 1), full[:1]), "1 row differs from the first of 33"
    assert torch.equal(_prefill(model, ids, 1), full), "token-by-token decode differs from one prefill"
    for isa in available_isas()[1:]:
        assert torch.equal(_prefill(_tiny_model(kernels_for, fmt, isa), ids, 7), full), f"{isa} differs"


@pytest.mark.slow  # writes two GGUF files and starts an engine
def test_a_q4_k_m_file_is_served_with_int8_activations_and_a_q2_k_file_is_refused(tmp_path):
    """The common download: its Q4_K and Q6_K blocks multiplied with int8 activations, named `.a8` in
    engine_version; 8 seeded requests give each the tokens it gets alone. A Q2_K file is refused at start."""
    from arch_models import build_hf_model, prompt
    from test_served_architectures import _serve
    from tiny_tokenizer import save_tiny_tokenizer
    from write_gguf import write_gguf

    from seedstream.sampler import SamplingParams
    from seedstream.server.engine import EngineConfig, GenerationRequest, load_engine

    folder = tmp_path / "llama"
    shape = dict(vocab_size=256, hidden_size=256, intermediate_size=512, head_dim=64, num_hidden_layers=2)
    build_hf_model("llama", **shape).save_pretrained(str(folder))
    save_tiny_tokenizer(folder)
    files = {}
    for kind in ("q4_k_m", "q2_k"):
        files[kind] = tmp_path / kind / f"llama-{kind}.gguf"
        files[kind].parent.mkdir()
        write_gguf(folder, files[kind], kind)
    engine = load_engine(
        EngineConfig(model=str(files["q4_k_m"]), backend="kernels", activations="int8"), progress=lambda m: None
    )
    assert engine.info.weight_format == "q4_k,q6_k" and ".q4_k,q6_k.a8." in engine.info.engine_version
    requests = [
        GenerationRequest(
            tuple(prompt(20 + 3 * i, 256, seed=i)), SamplingParams(temperature=0.8, seed=i), max_new_tokens=12
        )
        for i in range(8)
    ]
    alone, together = _serve(engine, requests)
    assert alone == together
    with pytest.raises(ValueError, match="activations='int8' needs weights in q4_0, .*; these include q2_k"):
        load_engine(
            EngineConfig(model=str(files["q2_k"]), backend="kernels", activations="int8"), progress=lambda m: None
        )


@pytest.mark.parametrize("fmt", ("q4_1", "q4_k"))
def test_the_int8_layout_shares_no_memory_with_the_float_layout(fmt):
    """The float layout is mapped from the cache and read once to regroup: nothing of the int8 matrix may point
    into it (a bias view would keep the whole mapping, every page read, alive beside the copy)."""
    rows, _ = stored(fmt, 32, 256, seed=8)
    bias = torch.arange(32, dtype=torch.float32)
    plain = dataclasses.replace(packing.pack_stored(fmt, rows), bias=bias)
    regrouped = packing.for_int8_activations(plain)
    assert torch.equal(regrouped.bias, bias)
    plain_storages = {plain.data.untyped_storage().data_ptr(), bias.untyped_storage().data_ptr()}
    for tensor in (regrouped.data, regrouped.bias):
        assert tensor.untyped_storage().data_ptr() not in plain_storages
