"""A bfloat16 or float16 safetensors folder is served as stored (issue 22): its matrices are packed at 16 bits
straight from the files' memory maps (weight_format bf16/f16), no float32 copy is cached, and the served
logprobs match transformers on the same weights."""

from __future__ import annotations

import pytest
import torch
from arch_models import build_hf_model, hf_logprobs, prompt
from test_served_architectures import _serve
from tiny_tokenizer import save_tiny_tokenizer

from seedstream.sampler import SamplingParams
from seedstream.server.engine import EngineConfig, GenerationRequest, load_engine
from seedstream.server.engine.arch import ModelConfig, canonical_state_dict
from seedstream.server.engine.gguf_tensors import StoredTensor
from seedstream.server.engine.loader import load_weights

FORMATS = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}
TOLERANCE = 1e-4


def quiet(_msg: str) -> None:
    pass


@pytest.fixture
def cache(fresh_cache):
    return fresh_cache


def _folder(tmp_path, name: str, dtype: torch.dtype):
    """A tiny random `name` model saved by transformers in `dtype`, with a tokenizer."""
    folder = tmp_path / f"{name}-{FORMATS[dtype]}"
    model = build_hf_model(name).to(dtype)
    model.save_pretrained(str(folder))
    save_tiny_tokenizer(folder, model.config.vocab_size)
    return folder


def _reference(folder):
    """transformers' own model of the folder, widened to float32 (the values the file stores, exactly)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager").eval()


def _weight_file(folder):
    (weights,) = folder.glob("*.safetensors")
    return weights


# llama: untied head; phi3: fused q/k/v and gate/up split by rows of the map; gemma2: 1 + w and sandwich norms
@pytest.mark.parametrize("name", ["llama-untied-vocab256", "phi3-partial-rotary", "gemma2"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_folder_is_read_as_stored_and_equals_transformers_state(tmp_path, cache, name, dtype):
    folder = _folder(tmp_path, name, dtype)
    weights = load_weights(str(folder), quiet)
    model = _reference(folder)
    reference = canonical_state_dict(ModelConfig.from_hf(model.config.to_dict()), dict(model.state_dict()))
    assert set(weights.state_dict) == set(reference)
    for key, expected in reference.items():
        got = weights.state_dict[key]
        assert got.dtype == torch.float32 and torch.equal(got, expected), f"{name}: {key} differs"
    assert set(weights.stored) == {k for k, v in reference.items() if v.dim() == 2}, "every matrix, no norm"
    for key, stored in weights.stored.items():
        assert isinstance(stored, StoredTensor) and stored.format == FORMATS[dtype], key
        assert not stored.rows.flags.owndata, f"{key}: a view of the file's map, not a copy"
    (entry,) = cache.glob("v*")
    assert not list(entry.glob("*.safetensors")), "the entry holds the config and tokenizer only"


def test_a_sharded_16_bit_folder_is_read_as_one(tmp_path, cache):
    whole = _folder(tmp_path, "llama-untied-vocab256", torch.bfloat16)
    sharded = tmp_path / "sharded"
    _reference(whole).to(torch.bfloat16).save_pretrained(str(sharded), max_shard_size="50KB")
    save_tiny_tokenizer(sharded, 256)
    assert len(list(sharded.glob("*.safetensors"))) > 1
    one, shards = load_weights(str(whole), quiet), load_weights(str(sharded), quiet)
    assert one.state_dict.keys() == shards.state_dict.keys()
    assert all(torch.equal(one.state_dict[k], shards.state_dict[k]) for k in one.state_dict)
    assert {t.format for t in shards.stored.values()} == {"bf16"}


def test_a_float32_folder_is_converted_as_before(tmp_path, cache):
    weights = load_weights(str(_folder(tmp_path, "llama-untied-vocab256", torch.float32)), quiet)
    assert not weights.stored and {t.dtype for t in weights.state_dict.values()} == {torch.float32}
    (entry,) = cache.glob("v*")
    assert (entry / "model.safetensors").is_file(), "the canonical float32 state, read at every start"


def _requests(vocab: int) -> list[GenerationRequest]:
    """A greedy probe with prompt logprobs, then 7 sampled requests to serve beside it."""
    probe = GenerationRequest(
        tuple(prompt(40, vocab, seed=3)),
        SamplingParams(temperature=0.0, seed=1),
        max_new_tokens=16,
        ignore_eos=True,
        prompt_logprobs=True,
    )
    others = [
        GenerationRequest(tuple(prompt(n, vocab, seed=n)), SamplingParams(temperature=0.9, seed=n), max_new_tokens=8)
        for n in range(3, 10)
    ]
    return [probe, *others]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16_bit_folder_is_served_at_16_bits_as_transformers_computes(tmp_path, cache, dtype):
    folder = _folder(tmp_path, "llama-untied-vocab256", dtype)
    engine = load_engine(EngineConfig(model=str(folder), backend="kernels"), progress=quiet)
    fmt = FORMATS[dtype]
    assert engine.info.weight_format == fmt and f".{fmt}.attn" in engine.info.engine_version
    assert engine.model.embed.formats == engine.model.lm_head.formats == [fmt]
    requests = _requests(256)
    alone, together = _serve(engine, requests)
    assert alone == together, "a request alone differs from it among 8 concurrent ones"
    tokens, logprobs, prompt_logprobs = alone[0]
    ids = list(requests[0].prompt_token_ids)
    reference = hf_logprobs(_reference(folder), ids + tokens[:-1])
    positions = torch.arange(1, len(ids) + len(tokens))
    chosen = reference[positions - 1, torch.tensor(ids[1:] + tokens)]
    diff = (torch.tensor(prompt_logprobs[1:] + logprobs) - chosen).abs().max().item()
    assert diff <= TOLERANCE, f"{fmt}: max |logprob difference| {diff:.2e} against transformers"
    (packed,) = cache.glob("packed-*-auto")
    packed_bytes = sum(p.stat().st_size for p in packed.iterdir())
    assert packed_bytes <= 1.2 * _weight_file(folder).stat().st_size, "packed as stored: no float32 copy"
    # --weights f32 converts (named so); the 16-bit kernels widen each weight exactly and keep f32's FMA
    # order, so the streams are the same bits
    widened = load_engine(EngineConfig(model=str(folder), weights="f32"), progress=quiet)
    assert widened.info.weight_format == "f32" and widened.model.lm_head.formats == ["f32"]
    assert _serve(widened, requests[:1])[0] == alone[:1]


@pytest.mark.slow
def test_a_named_quantisation_converts_every_matrix(tmp_path, cache):
    """--weights q8_0 quantises a bf16 folder's matrices, as before they were kept as stored."""
    folder = _folder(tmp_path, "llama-untied-vocab256", torch.bfloat16)
    engine = load_engine(EngineConfig(model=str(folder), weights="q8_0"), progress=quiet)
    assert engine.info.weight_format == "q8_0" and ".q8_0.attn" in engine.info.engine_version
    assert engine.model.embed.formats == engine.model.lm_head.formats == ["q8_0"]
