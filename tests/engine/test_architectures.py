"""Every supported architecture and option, on the forward paths, against transformers' own forward.

For each tiny random-weight model of arch_models.VARIANTS: the served prompt logprobs equal transformers'
within 1e-4; prefill in chunks, token by token and packed beside other sequences give identical bits.
"""

from __future__ import annotations

import pytest
import torch
from arch_models import VARIANTS, build_hf_model, hf_config, hf_logprobs, prompt, served_inputs

from seedstream.server.engine.arch import UnsupportedModel, canonical_state_dict, read_config
from seedstream.server.engine.model import DecoderModel, Segment

TOLERANCE = 1e-4  # max |logprob difference| against transformers, float32 weights


def torch_path(model) -> DecoderModel:
    cfg, state = served_inputs(model)
    return DecoderModel(cfg, state, torch.device("cpu"), torch.float32)


def run_chunks(served, ids: list[int], chunk: int) -> torch.Tensor:
    """Logits of every position of `ids`, computed in chunks of `chunk` tokens."""
    cache, rows = served.new_cache(), []
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        segment = Segment(cache, start, len(part))
        rows.append(
            served.forward(
                torch.tensor(part), torch.arange(start, start + len(part)), [segment], torch.arange(len(part))
            )
        )
    return torch.cat(rows)


def prompt_length(served) -> int:
    # past the windows (8, 16) and the torch path's 128-position key block, within the context served
    return min(150, served.cfg.max_context)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    model = build_hf_model(request.param)
    served = torch_path(model)
    ids = prompt(prompt_length(served), served.cfg.vocab_size)
    return request.param, model, served, ids


def test_prompt_logprobs_match_transformers(variant):
    name, model, served, ids = variant
    ours = torch.log_softmax(run_chunks(served, ids, len(ids)), dim=-1)
    diff = (ours - hf_logprobs(model, ids)).abs().max().item()
    assert diff <= TOLERANCE, f"{name}: max |logprob difference| {diff:.2e} against transformers"


def test_prefill_chunks_and_decode_give_the_same_bits(variant):
    name, _, served, ids = variant
    whole = run_chunks(served, ids, len(ids))
    for chunk in (1, 7):
        assert torch.equal(run_chunks(served, ids, chunk), whole), f"{name}: chunks of {chunk} differ"


def test_a_sequence_alone_equals_it_packed_with_others(variant):
    name, _, served, ids = variant
    alone = run_chunks(served, ids, len(ids))
    others = [prompt(n, served.cfg.vocab_size, seed=n) for n in (3, 20, 45)]
    caches = [served.new_cache() for _ in range(len(others) + 1)]
    tokens, positions, segments = [], [], []
    for cache, seq in zip(caches, [*others[:2], ids, others[2]]):
        tokens += seq
        positions += range(len(seq))
        segments.append(Segment(cache, 0, len(seq)))
    logits = served.forward(torch.tensor(tokens), torch.tensor(positions), segments, torch.arange(len(tokens)))
    start = 3 + 20
    assert torch.equal(logits[start : start + len(ids)], alone), f"{name}: packed rows differ from alone"


def test_windows_reach_back_exactly_the_window():
    """A windowed layer's output at p does not depend on tokens before p - W + 1: change one there, see
    nothing; change the oldest one inside, see a difference (a model whose layers are all windowed)."""
    model = build_hf_model("mistral-window", num_hidden_layers=1)
    served = torch_path(model)
    ids = prompt(40, served.cfg.vocab_size)
    base = run_chunks(served, ids, len(ids))[-1]
    outside, inside = list(ids), list(ids)
    outside[40 - 8 - 1] = (ids[40 - 8 - 1] + 1) % served.cfg.vocab_size
    inside[40 - 8] = (ids[40 - 8] + 1) % served.cfg.vocab_size
    assert torch.equal(run_chunks(served, outside, 40)[-1], base)
    assert not torch.equal(run_chunks(served, inside, 40)[-1], base)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"model_type": "gpt2", "num_hidden_layers": 1}, ["model_type 'gpt2'", "llama", "gemma3_text"]),
        ({"rope_parameters": {"rope_type": "su", "rope_theta": 1e4}}, ["rope_type 'su'", "longrope"]),
        ({"hidden_act": "relu"}, ["activation 'relu'", "silu"]),
        ({"use_bidirectional_attention": True}, ["use_bidirectional_attention"]),
    ],
)
def test_unsupported_configs_are_refused_with_what_is_supported(config, words):
    cfg = {**hf_config("llama").to_dict(), **config}
    with pytest.raises(UnsupportedModel) as err:
        read_config(cfg)
    for word in words:
        assert word in str(err.value)


def test_a_weight_the_config_does_not_announce_is_refused_not_dropped():
    """A checkpoint with o_proj biases whose config says attention_bias=False: never served without them."""
    model = build_hf_model("llama")
    cfg = read_config(model.config.to_dict())
    state = dict(model.state_dict())
    state["model.layers.0.self_attn.o_proj.bias"] = torch.ones(cfg.hidden_size)
    with pytest.raises(UnsupportedModel, match="unused model.layers.0.self_attn.o_proj.bias"):
        canonical_state_dict(cfg, state)
