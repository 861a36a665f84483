"""The forward pass on the C++ kernels: prefill equals decode, every instruction set agrees, formats are accurate."""

import numpy as np
import pytest
import torch

from seedstream.server.engine import EngineConfig, arch, kernel_model, load_engine
from seedstream.server.engine.backends import packed_weights
from seedstream.server.engine.gguf_tensors import read_gguf
from seedstream.server.engine.kernel_model import KernelModel
from seedstream.server.engine.kv_cache import SequenceKVCache
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


def _model(weights, cfg, fmt="auto", isa=None, threads=2, kv_dtype=torch.float32, activations="float32"):
    kernels = load_kernels(threads, cache_root() / "kernels", isa)
    assert kernels is not None, "the kernels did not build"
    packed, resolved, norms = packed_weights(weights, cfg, fmt)
    return KernelModel(cfg, norms, packed, resolved, kernels, kv_dtype, activations)


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


@pytest.mark.parametrize(
    "kv_dtype,activations", [(torch.float32, "float32"), (torch.bfloat16, "float32"), (torch.float32, "int8")]
)
def test_a_sequence_gets_the_same_bits_packed_with_others_at_one_and_two_threads(weights, cfg, kv_dtype, activations):
    one = _model(weights, cfg, threads=1, kv_dtype=kv_dtype, activations=activations)
    two = _model(weights, cfg, threads=2, kv_dtype=kv_dtype, activations=activations)
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
@pytest.mark.parametrize(
    "fmt,kv_dtype,activations",
    [
        ("f32", torch.float32, "float32"),
        ("q4_1", torch.float32, "float32"),
        ("q4_1", torch.bfloat16, "float32"),
        ("q4_1", torch.float32, "int8"),
    ],
)
def test_every_instruction_set_gives_the_same_bits(weights, cfg, fmt, kv_dtype, activations):
    ids = _prompt(weights, 12)
    results = {}
    for isa in available_isas():  # e.g. avx512, avx2 and the portable scalar build
        model = _model(weights, cfg, fmt, isa=isa, kv_dtype=kv_dtype, activations=activations)
        logits, cache = _run_chunked(model, ids, 12)
        step = model.forward(torch.tensor([ids[0]]), torch.tensor([12]), [Segment(cache, 12, 1)], torch.tensor([0]))
        results[isa] = (logits, step, cache.keys[:, :, :13].clone())
    assert len(results) >= 2, "at least one SIMD build and the scalar reference"
    first = next(iter(results.values()))
    for isa, got in results.items():
        assert all(torch.equal(a, b) for a, b in zip(got, first)), f"{isa} differs"


@pytest.mark.slow
def test_stored_gguf_blocks_are_the_weights_transformers_reads(weights, cfg):
    from transformers import AutoModelForCausalLM

    path = weights.source_path
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).state_dict()
    _, stored = read_gguf(path, cfg)
    for name in (
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.29.mlp.down_proj.weight",
        "model.embed_tokens.weight",
    ):
        t = stored[name]
        split = packing.split_gguf_q4_1 if t.format == "q4_1" else packing.split_gguf_q8_0
        dequant = (packing.dequantize_q4_1 if t.format == "q4_1" else packing.dequantize_q8_0)(*split(t.rows))
        assert np.array_equal(dequant, hf[name].numpy()), name


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


@pytest.mark.slow
def test_bfloat16_keys_and_values_against_the_torch_path(weights, cfg):
    """The kernels with a bfloat16 KV cache against the torch path caching the same way (torch rounds as the
    kernels do), and against the float32 torch path: the accuracy --kv-cache-dtype bfloat16 gives up."""
    ids = _prompt(weights, 64)
    got, cache = _run_chunked(_model(weights, cfg, "q4_1", kv_dtype=torch.bfloat16), ids, 64)
    assert cache.keys.dtype == torch.bfloat16
    for kv, bound in ((torch.bfloat16, 0.25), (torch.float32, 1.0)):
        torch_model = DecoderModel(cfg, weights.state_dict, torch.device("cpu"), torch.float32, kv_dtype=kv)
        want, _ = _run_chunked(torch_model, ids, 64)
        # With bfloat16 caches on both sides, a key that the two summation orders leave on either side of a
        # rounding boundary differs by one bfloat16 step (2**-8 relative); against float32 caches, all do.
        assert (got - want).abs().max() < bound, kv
        assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9, kv


@pytest.mark.slow
def test_int8_activations_against_the_fp32_torch_path(weights, cfg):
    """What --activations int8 gives up: every GEMM input rounded to int8 per 32-block (as llama.cpp does).
    Measured on the default model: largest logit difference ~1.3-2.3, greedy agreement ~0.95 (docs/kernels.md)."""
    ids = _prompt(weights, 64)
    torch_model = DecoderModel(cfg, weights.state_dict, torch.device("cpu"), torch.float32)
    want, _ = _run_chunked(torch_model, ids, 64)
    got, _ = _run_chunked(_model(weights, cfg, "q4_1", activations="int8"), ids, 64)
    assert (got - want).abs().max() < 4.0
    assert (got - want).abs().max() > 0.01, "the activations really are quantised"
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.85
    nll = [torch.nn.functional.cross_entropy(x[:-1], torch.tensor(ids[1:])) for x in (got, want)]
    assert abs(float(nll[0] - nll[1])) < 0.05, "perplexity within 5 %"


def test_greedy_chat_answer_with_bfloat16_keys_and_values(weights, cfg):
    """q4_1 weights with a bfloat16 KV cache still answer what the float32 model answers."""
    model = _model(weights, cfg, kv_dtype=torch.bfloat16)
    text = weights.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    ids = weights.tokenizer(text, add_special_tokens=False)["input_ids"]
    cache, out = model.new_cache(), []
    logits = model.forward(
        torch.tensor(ids), torch.arange(len(ids)), [Segment(cache, 0, len(ids))], torch.tensor([len(ids) - 1])
    )
    for _ in range(8):
        out.append(int(logits[0].argmax()))
        pos = len(ids) + len(out) - 1
        logits = model.forward(torch.tensor(out[-1:]), torch.tensor([pos]), [Segment(cache, pos, 1)], torch.tensor([0]))
    assert weights.tokenizer.decode(out).startswith("The capital of France is Paris")


@pytest.mark.slow  # loads the default model more than once (12-13 s)
def test_kv_cache_dtype_is_part_of_engine_version():
    default = load_engine(EngineConfig(), progress=lambda m: None).info.engine_version
    bf16 = load_engine(EngineConfig(kv_cache_dtype="bfloat16"), progress=lambda m: None).info.engine_version
    assert bf16 == default + ".kvbf16"
    assert load_engine(EngineConfig(kv_cache_dtype="float32"), progress=lambda m: None).info.engine_version == default
    torch_f32 = load_engine(EngineConfig(backend="torch"), progress=lambda m: None).info.engine_version
    torch_bf16 = load_engine(EngineConfig(backend="torch", kv_cache_dtype="bfloat16"), progress=lambda m: None)
    assert torch_bf16.info.engine_version == torch_f32 + ".kvbf16"
    assert torch_bf16.model.new_cache().keys.dtype == torch.bfloat16


def test_activations_are_part_of_engine_version_and_need_quantised_kernel_weights():
    default = load_engine(EngineConfig(), progress=lambda m: None).info.engine_version
    int8 = load_engine(EngineConfig(activations="int8"), progress=lambda m: None)
    assert int8.info.engine_version == default.replace(".q4_1.", ".q4_1.a8.")
    assert int8.model.activations == "int8"
    for bad, match in (
        (dict(activations="int4"), "activations='int4': allowed float32, int8"),
        (dict(activations="int8", backend="torch"), "activations='int8' needs the kernels"),
        (dict(activations="int8", weights="f32"), "activations='int8' needs the kernels"),
    ):
        with pytest.raises(ValueError, match=match):
            EngineConfig(**bad)


@pytest.mark.slow  # loads the default model more than once (12-13 s)
def test_the_torch_path_is_kept_and_named_differently(monkeypatch):
    kernels = load_engine(EngineConfig(), progress=lambda m: None)
    torch_path = load_engine(EngineConfig(backend="torch"), progress=lambda m: None)
    assert ".ssk" in kernels.info.engine_version and kernels.info.weight_format == "q4_1"
    assert ".ssk" not in torch_path.info.engine_version and torch_path.info.weight_format == "float32"
    monkeypatch.setenv("SEEDSTREAM_KERNELS", "off")
    fallback = load_engine(EngineConfig(), progress=lambda m: None)
    assert fallback.info.engine_version == torch_path.info.engine_version
    with pytest.raises(RuntimeError, match="activations=int8 asked for"):  # never a silent change of bits
        load_engine(EngineConfig(activations="int8"), progress=lambda m: None)


def test_no_compiler_means_no_kernels_not_a_crash(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert load_kernels(1, tmp_path / "empty-cache") is None
    with pytest.raises(ValueError, match="needs backend=kernels"):
        EngineConfig(backend="torch", weights="q4_1")


def test_rope_tables_grown_as_positions_reach_them_give_the_same_bits(weights, cfg, monkeypatch):
    """A model starts with short rope tables and grows them as a sequence's positions pass their end: the
    logits equal those of a model built with tables for the whole context."""
    whole = _model(weights, cfg)
    assert whole.rope_rows == min(cfg.max_context, kernel_model.ROPE_ROWS_AT_START)
    monkeypatch.setattr(kernel_model, "ROPE_ROWS_AT_START", 8)
    grown = _model(weights, cfg)
    assert grown.rope_rows == 8
    ids = _prompt(weights, 60)
    want, _ = _run_chunked(whole, ids, 60)
    got, _ = _run_chunked(grown, ids, 7)  # 8 -> 16 -> 32 -> 64 rows, a chunk at a time
    assert grown.rope_rows == 64
    assert torch.equal(got, want)


def test_rope_tables_built_in_parts_equal_one_build():
    spec = arch.default_rope(500000.0, 64)
    cos, sin = arch.rope_tables(spec, 300)
    head_cos, head_sin = arch.rope_tables(spec, 100)
    tail_cos, tail_sin = arch.rope_tables(spec, 300, start=100)
    assert np.array_equal(np.concatenate([head_cos, tail_cos]), cos)
    assert np.array_equal(np.concatenate([head_sin, tail_sin]), sin)


def test_scratch_released_between_steps_changes_no_bit(weights, cfg):
    """The engine frees the kernels' scratch when it goes idle: the logits computed after a release (a new
    context and thread pool, the scratch regrown from nothing) equal those of a model that never released."""
    kept, released = _model(weights, cfg), _model(weights, cfg)
    ids = _prompt(weights, 40)
    want, _ = _run_chunked(kept, ids, 40)
    _run_chunked(released, ids, 40)  # grows the scratch to 40 rows
    released.release_scratch()
    got, _ = _run_chunked(released, ids, 8)  # regrown at 8 rows
    released.release_scratch()
    assert torch.equal(got, want)
    assert torch.equal(_run_chunked(released, ids, 40)[0], want)


def test_a_released_kv_cache_holds_nothing():
    cache = SequenceKVCache(2, 1, 16, torch.device("cpu"), torch.float32)
    cache.reserve(5)
    assert cache.capacity == 128 and cache.nbytes() == 2 * 2 * 128 * 16 * 4
    cache.release()
    assert (cache.capacity, cache.length, cache.nbytes()) == (0, 0, 0)
    cache.reserve(3)  # an ended sequence is never stepped again, but a released cache still works
    assert cache.keys.shape == (2, 1, 128, 16)
