"""Every ModelConfig option on the kernels: tiny random-weight transformers models, matched to within 1e-4,
and each option's rows keep their bits in any batch, chunking and instruction set."""

import dataclasses
import logging

import pytest
import torch

from seedstream.server.engine import EngineConfig, arch
from seedstream.server.engine.backends import build_model
from seedstream.server.engine.kernel_model import KernelModel, kernel_shape_problem, pack_model_weights
from seedstream.server.engine.loader import LoadedWeights, cache_root
from seedstream.server.engine.model import DecoderModel, Segment
from seedstream.server.kernels import available_isas, load_kernels

transformers = pytest.importorskip("transformers")
arch_models = pytest.importorskip("arch_models")  # tests/engine: the architectures' tiny configs

VOCAB = arch_models.BASE["vocab_size"]  # not a multiple of 16: the packed rows are padded
PROMPT = arch_models.prompt(80, VOCAB)  # longer than every window and than 2 attention blocks


def _perturb(model, std: float = 0.15) -> None:
    """Weights big enough for sharp distributions (every option then moves the logits by far more than
    1e-4: soft caps bite, windows matter), non-zero biases, norms away from 1 (Gemma's w: away from 0)."""
    gen = torch.Generator().manual_seed(1)
    centre = 0.0 if model.config.model_type.startswith("gemma") else 1.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(centre + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if name.endswith("bias") else std))


def _build(name: str, **overrides):
    """(transformers model, ModelConfig, canonical state dict) of arch_models.VARIANTS[name]."""
    model = arch_models.build_hf_model(name, **overrides)
    _perturb(model, std=0.15 * (64 / model.config.hidden_size) ** 0.5)
    return (model, *arch_models.served_inputs(model))


@pytest.fixture(scope="module")
def built():
    """built(name) -> _build(name), once per name."""
    made = {}

    def get(name):
        if name not in made:
            made[name] = _build(name)
        return made[name]

    return get


def _kernel_model(cfg, sd, isa=None, threads=2) -> KernelModel:
    kernels = load_kernels(threads, cache_root() / "kernels", isa)
    assert kernels is not None, "the kernels did not build"
    return KernelModel(cfg, sd, pack_model_weights(cfg, sd, {}, "f32"), "f32", kernels)


def _prefill(model, ids, chunk):
    """Logits [T, V] of every position, prefilled in chunks of `chunk` rows."""
    cache, out = model.new_cache(), []
    for start in range(0, len(ids), chunk):
        n = len(ids[start : start + chunk])
        segs = [Segment(cache, start, n)]
        out.append(
            model.forward(torch.tensor(ids[start : start + n]), torch.arange(start, start + n), segs, torch.arange(n))
        )
    return torch.cat(out)


@pytest.mark.parametrize("name", list(arch_models.VARIANTS))
def test_matches_transformers_and_keeps_its_bits(built, name):
    hf, cfg, sd = built(name)
    model = _kernel_model(cfg, sd)
    got = _prefill(model, PROMPT, len(PROMPT))
    assert got.shape == (len(PROMPT), cfg.vocab_size) and got.is_contiguous()
    diff = (got.log_softmax(-1) - arch_models.hf_logprobs(hf, PROMPT)).abs().max().item()
    assert diff <= 1e-4, f"{name}: max |logprob difference| {diff:.3g}"
    assert torch.equal(_prefill(model, PROMPT, 1), got), "token-by-token decode differs from one prefill"
    assert torch.equal(_prefill(model, PROMPT, 29), got), "prefill in chunks of 29 differs"
    _alone_equals_packed(model, got)


@pytest.mark.parametrize(
    "heads,kv_heads,head_dim", [(2, 1, 80), (8, 1, 16), (6, 2, 48), (12, 4, 96), (1, 1, 256)]
)  # MQA, GQA at ratios 8, 3 and 3, and 1: every attention work-item grouping, five of the head sizes
def test_head_counts_and_sizes_match_transformers(heads, kv_heads, head_dim):
    shape = dict(num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, num_hidden_layers=1)
    hf, cfg, sd = _build("qwen2-window", **shape)
    model = _kernel_model(cfg, sd)
    got = _prefill(model, PROMPT, len(PROMPT))
    assert (got.log_softmax(-1) - arch_models.hf_logprobs(hf, PROMPT)).abs().max() <= 1e-4
    assert torch.equal(_prefill(model, PROMPT, 1), got)
    _alone_equals_packed(model, got)


def _alone_equals_packed(model, alone):
    """PROMPT's logits beside 7 other sequences (some mid-decode, some prefilling) are those it has alone."""
    gen = torch.Generator().manual_seed(3)
    others = [torch.randint(0, VOCAB, (int(n),), generator=gen).tolist() for n in (5, 70, 33, 1, 90, 12, 41)]
    caches = [model.new_cache() for _ in range(8)]
    for cache, ids in zip(caches[1:], others):  # each has its first half cached already
        half = len(ids) // 2
        if half:
            model.forward(torch.tensor(ids[:half]), torch.arange(half), [Segment(cache, 0, half)], torch.arange(0))
    rows, pos, segs = list(PROMPT), list(range(len(PROMPT))), [Segment(caches[0], 0, len(PROMPT))]
    for cache, ids in zip(caches[1:], others):
        half = len(ids) // 2
        rows += ids[half:]
        pos += list(range(half, len(ids)))
        segs.append(Segment(cache, half, len(ids) - half))
    order = [3, 0, 5, 1, 7, 2, 6, 4]  # the prompt's segment sits 2nd
    start = [0]
    for s in segs:
        start.append(start[-1] + s.length)
    rows = sum((rows[start[i] : start[i + 1]] for i in order), [])
    pos = sum((pos[start[i] : start[i + 1]] for i in order), [])
    first = sum(segs[i].length for i in order[: order.index(0)])
    packed = model.forward(
        torch.tensor(rows), torch.tensor(pos), [segs[i] for i in order], torch.arange(first, first + len(PROMPT))
    )
    assert torch.equal(packed, alone), "a sequence packed with 7 others differs from alone"


def _every_option(built):
    """gemma3 (qk-norm, sandwich norms, embedding scale, GELU-tanh, windows, two RoPEs, attn_scale) with soft
    caps, all biases, partial rotary and a NoPE layer added: not a transformers model, one to compare builds."""
    _, cfg, sd = built("gemma3")
    rope = arch.default_rope(10000.0, cfg.head_dim, rotary_dim=8)
    cfg = dataclasses.replace(
        cfg,
        attention_bias=True,
        attention_out_bias=True,
        mlp_bias=True,
        attn_softcap=2.0,
        final_softcap=3.0,
        ropes=(rope, cfg.ropes[1]),
        layers=(arch.LayerSpec(arch_models.WINDOW, 0), arch.LayerSpec(0, 1), arch.LayerSpec(0, -1)),
    )
    sd, gen = dict(sd), torch.Generator().manual_seed(5)
    for name in arch.expected_tensors(cfg):
        if name.endswith("bias"):
            sd[name] = torch.randn(sd[name.replace("bias", "weight")].shape[0], generator=gen) * 0.1
    return cfg, sd


@pytest.mark.slow  # builds the kernels for every instruction set
def test_every_instruction_set_gives_the_same_bits_with_every_option(built):
    cfg, sd = _every_option(built)
    results = {}
    for isa in available_isas():  # e.g. avx512, avx2 and the portable scalar build
        model = _kernel_model(cfg, sd, isa, threads=1 if isa == "scalar" else 2)
        assert model.version_tag.endswith(".tanh1")
        cache = model.new_cache()
        logits = model.forward(torch.tensor(PROMPT), torch.arange(80), [Segment(cache, 0, 80)], torch.arange(80))
        step = model.forward(torch.tensor([5]), torch.tensor([80]), [Segment(cache, 80, 1)], torch.tensor([0]))
        results[isa] = (logits, step, cache.keys[:, :, :81].clone(), cache.values[:, :, :81].clone())
    assert len(results) >= 2, "at least one SIMD build and the scalar reference"
    first = next(iter(results.values()))
    assert torch.isfinite(first[0]).all() and first[0].std() > 0.1
    for isa, got in results.items():
        assert all(torch.equal(a, b) for a, b in zip(got, first)), f"{isa} differs"


def test_unsupported_shapes_are_named_before_packing(built):
    kernels = load_kernels(1, cache_root() / "kernels")
    _, cfg, _ = built("llama")
    R = dataclasses.replace
    for ok in (
        dict(head_dim=80),
        dict(head_dim=96),
        dict(head_dim=256),
        dict(hidden_size=8192),
        dict(vocab_size=49160),
    ):
        assert kernel_shape_problem(R(cfg, **ok), kernels) is None, ok
    for bad, why in (
        (dict(head_dim=144), "head_dim 144"),
        (dict(head_dim=20), "head_dim 20"),
        (dict(hidden_size=4100), "hidden size 4100"),
        (dict(intermediate_size=100), "intermediate size 100"),
        (dict(num_heads=3, num_kv_heads=1, head_dim=16), "3 heads x head_dim 16"),
        (dict(num_kv_heads=3), "4 query heads over 3 key/value heads"),
    ):
        assert why in (kernel_shape_problem(R(cfg, **bad), kernels) or ""), bad


def test_an_unsupported_head_dim_is_refused_at_load_not_at_the_first_step():
    _, cfg, sd = _build("llama", head_dim=144, num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(ValueError, match="head_dim 144"):
        _kernel_model(cfg, sd)


def test_a_hidden_size_beyond_4096_matches_transformers():
    shape = dict(hidden_size=4128, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=64)
    hf, cfg, sd = _build("llama", vocab_size=40, **shape)
    ids = [i % 40 for i in PROMPT[:20]]
    got = _prefill(_kernel_model(cfg, sd), ids, 20)
    assert (got.log_softmax(-1) - arch_models.hf_logprobs(hf, ids)).abs().max() <= 1e-4


def test_auto_serves_an_unsupported_shape_on_torch_and_kernels_refuses_it(tmp_path, caplog):
    _, cfg, sd = _build("llama", head_dim=144, num_attention_heads=2, num_key_value_heads=1)
    weights = LoadedWeights("tiny", tmp_path, "0" * 64, "0" * 64, {}, sd, None, ())
    cpu = torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger="seedstream.engine"):
        model, fmt = build_model(weights, EngineConfig(), cfg, cpu, torch.float32)
    assert isinstance(model, DecoderModel) and fmt == "float32"
    assert "head_dim 144" in caplog.text and "torch path" in caplog.text
    with pytest.raises(RuntimeError, match="backend=kernels.*head_dim 144"):
        build_model(weights, EngineConfig(backend="kernels"), cfg, cpu, torch.float32)
