"""The forward pass on the C++ kernels: prefill equals decode, every instruction set agrees, formats are accurate."""

import numpy as np
import pytest
import torch

from seedstream.server.engine import EngineConfig, load_engine
from seedstream.server.engine.backends import packed_weights
from seedstream.server.engine.gguf_tensors import read_stored_matrices
from seedstream.server.engine.kernel_model import KernelModel
from seedstream.server.engine.loader import cache_root
from seedstream.server.engine.model import DecoderModel, ModelConfig, Segment
from seedstream.server.kernels import available_isas, load_kernels, packing

TEXT = (
    "The quick brown fox jumps over the lazy dog. Reproducible generation means that the same request, "
    "with the same seed, gives the same tokens every time, alone or beside other requests. "
)


@pytest.fixture(scope="module")
def cfg(weights):
    return ModelConfig.from_hf(weights.config)


def _model(weights, cfg, fmt="auto", isa=None, threads=2):
    kernels = load_kernels(threads, cache_root() / "kernels", isa)
    assert kernels is not None, "the kernels did not build"
    packed, resolved = packed_weights(weights, cfg, fmt)
    return KernelModel(cfg, weights.state_dict, packed, resolved, kernels)


def _prompt(weights, n):
    ids = weights.tokenizer(TEXT * 20, add_special_tokens=False)["input_ids"]
    return ids[:n]


def _run_chunked(model, ids, chunk):
    """Prefill `ids` in chunks of `chunk` rows; logits of every position [T, V] and the cache."""
    cache, logits = model.new_cache(), []
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        n = len(part)
        logits.append(
            model.forward(
                torch.tensor(part), torch.arange(start, start + n), [Segment(cache, start, n)], torch.arange(n)
            )
        )
    return torch.cat(logits), cache


@pytest.mark.slow
def test_prefill_chunks_of_any_size_equal_token_by_token_decode(weights, cfg):
    model = _model(weights, cfg)
    ids = _prompt(weights, 300)
    decode_logits, decode_cache = _run_chunked(model, ids, 1)
    for chunk in (7, 64, 256, 300):
        logits, cache = _run_chunked(model, ids, chunk)
        assert torch.equal(logits, decode_logits), f"chunk {chunk}: logits differ from decode"
        assert torch.equal(cache.keys[:, :, :300], decode_cache.keys[:, :, :300]), f"chunk {chunk}: keys differ"
        assert torch.equal(cache.values[:, :, :300], decode_cache.values[:, :, :300]), f"chunk {chunk}: values differ"


def test_a_sequence_gets_the_same_bits_packed_with_others_at_one_and_two_threads(weights, cfg):
    one, two = _model(weights, cfg, threads=1), _model(weights, cfg, threads=2)
    ids = _prompt(weights, 40)
    alone, alone_cache = _run_chunked(one, ids, 40)
    caches = [two.new_cache() for _ in range(3)]
    others = [_prompt(weights, 90)[50:], _prompt(weights, 13)]
    rows = others[0] + ids + others[1]
    segs = [Segment(caches[0], 0, 40), Segment(caches[1], 0, 40), Segment(caches[2], 0, 13)]
    pos = list(range(40)) * 2 + list(range(13))
    packed = two.forward(torch.tensor(rows), torch.tensor(pos), segs, torch.arange(40, 80))
    assert torch.equal(packed, alone)
    assert torch.equal(caches[1].keys[:, :, :40], alone_cache.keys[:, :, :40])


@pytest.mark.slow  # builds and runs the kernels for every instruction set
@pytest.mark.parametrize("fmt", ["f32", "q4_1"])
def test_every_instruction_set_gives_the_same_bits(weights, cfg, fmt):
    ids = _prompt(weights, 12)
    results = {}
    for isa in available_isas():  # e.g. avx512, avx2 and the portable scalar build
        model = _model(weights, cfg, fmt, isa=isa)
        logits, cache = _run_chunked(model, ids, 12)
        step = model.forward(torch.tensor([ids[0]]), torch.tensor([12]), [Segment(cache, 12, 1)], torch.tensor([0]))
        results[isa] = (logits, step, cache.keys[:, :, :13].clone())
    assert len(results) >= 2, "at least one SIMD build and the scalar reference"
    first = next(iter(results.values()))
    for isa, got in results.items():
        assert all(torch.equal(a, b) for a, b in zip(got, first)), f"{isa} differs"


@pytest.mark.slow
def test_stored_gguf_blocks_are_the_weights_transformers_reads(weights, cfg):
    stored = read_stored_matrices(weights.source_path, cfg.num_heads, cfg.num_kv_heads)
    for name in (
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.29.mlp.down_proj.weight",
        "model.embed_tokens.weight",
    ):
        t = stored[name]
        split = packing.split_gguf_q4_1 if t.format == "q4_1" else packing.split_gguf_q8_0
        dequant = (packing.dequantize_q4_1 if t.format == "q4_1" else packing.dequantize_q8_0)(*split(t.rows))
        assert np.array_equal(dequant, weights.state_dict[name].numpy()), name


@pytest.mark.slow
def test_formats_against_the_fp32_torch_path(weights, cfg):
    ids = _prompt(weights, 64)
    torch_model = DecoderModel(cfg, weights.state_dict, torch.device("cpu"), torch.float32)
    cache = torch_model.new_cache()
    want = torch_model.forward(torch.tensor(ids), torch.arange(64), [Segment(cache, 0, 64)], torch.arange(64))
    for fmt, bound in (("f32", 1e-3), ("q4_1", 1e-3), ("q8_0", 2.5)):
        got, _ = _run_chunked(_model(weights, cfg, fmt), ids, 64)
        # f32 and the file's own q4_1 compute the same weights in another order; q8_0 re-quantises them
        assert (got - want).abs().max() < bound, fmt
        assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9, fmt


def test_the_torch_path_is_kept_and_named_differently(monkeypatch):
    kernels = load_engine(EngineConfig(), progress=lambda m: None)
    torch_path = load_engine(EngineConfig(backend="torch"), progress=lambda m: None)
    assert ".ssk" in kernels.info.engine_version and kernels.info.weight_format == "q4_1"
    assert ".ssk" not in torch_path.info.engine_version and torch_path.info.weight_format == "float32"
    monkeypatch.setenv("SEEDSTREAM_KERNELS", "off")
    fallback = load_engine(EngineConfig(), progress=lambda m: None)
    assert fallback.info.engine_version == torch_path.info.engine_version


def test_no_compiler_means_no_kernels_not_a_crash(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert load_kernels(1, tmp_path / "empty-cache") is None
    with pytest.raises(ValueError, match="needs backend=kernels"):
        EngineConfig(backend="torch", weights="q4_1")
