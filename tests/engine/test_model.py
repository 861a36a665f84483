"""The engine's forward pass: matches transformers, and a sequence's logits are batch-invariant."""

import os
import random

import pytest
import torch
from device_cases import case_device

from seedstream.server.engine.loader import default_model_path
from seedstream.server.engine.model import DecoderModel, ModelConfig, Segment

pytestmark = pytest.mark.slow  # full forwards of the torch path per device, and transformers for reference


@pytest.fixture(scope="module")
def models(case_weights):
    """The float32 model of a device case (conftest.device), built once per module and case."""
    built = {}

    def get(case):
        if case not in built:
            weights = case_weights(case)
            built[case] = DecoderModel(
                ModelConfig.from_hf(weights.config), weights.state_dict, torch.device(case_device(case)), torch.float32
            )
        return built[case]

    return get


@pytest.fixture(scope="module")
def model(models):
    return models("cpu")


def _tensor(model, values):
    return torch.tensor(values, device=model.device)


def _token_ids(model, rng, count):
    """`count` random token ids from 100 up to 40000, or the vocabulary's end on a smaller model."""
    return [rng.randrange(100, min(40000, model.cfg.vocab_size)) for _ in range(count)]


def _prefill(model, ids, chunk=None):
    """Run `ids` through a fresh cache in chunks; return the last position's logits [V]."""
    cache = model.new_cache()
    chunk = chunk or len(ids)
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        logits = model.forward(
            _tensor(model, part),
            _tensor(model, list(range(start, start + len(part)))),
            [Segment(cache, start, len(part))],
            _tensor(model, [len(part) - 1]),
        )
    return logits[0], cache


def test_logits_match_transformers(model, weights):
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    hf = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    )
    ids = weights.tokenizer("The capital of France is Paris, and the capital of Italy is")["input_ids"]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]  # [T, V]
    ours, cache = _prefill(model, ids, chunk=5)
    torch.testing.assert_close(ours, ref[-1], atol=2e-4, rtol=0)
    nxt = int(ours.argmax())
    step = model.forward(
        torch.tensor([nxt]), torch.tensor([len(ids)]), [Segment(cache, len(ids), 1)], torch.tensor([0])
    )
    with torch.no_grad():
        ref_next = hf(torch.tensor([ids + [nxt]])).logits[0, -1]
    torch.testing.assert_close(step[0], ref_next, atol=2e-4, rtol=0)


def _prefill_packed(model, prompts):
    """Fresh caches holding `prompts`, all prefilled in one packed step (their contents are only company
    for the row under test: how they were computed does not matter)."""
    caches = [model.new_cache() for _ in prompts]
    tokens = [t for p in prompts for t in p]
    positions = [i for p in prompts for i in range(len(p))]
    segments = [Segment(c, 0, len(p)) for c, p in zip(caches, prompts)]
    model.forward(_tensor(model, tokens), _tensor(model, positions), segments, torch.zeros(0, dtype=torch.long))
    return caches


def test_decode_logits_are_bit_identical_alone_and_packed_with_others(models, device):
    model = models(device)
    rng = random.Random(0)
    target_prompt = _token_ids(model, rng, 37)
    _, target = _prefill(model, target_prompt)
    solo_cache = model.new_cache()
    solo_cache.copy_from(target)
    solo = model.forward(_tensor(model, [7]), _tensor(model, [37]), [Segment(solo_cache, 37, 1)], _tensor(model, [0]))[
        0
    ]
    lengths = [rng.randrange(1, 80) for _ in range(63)]
    company = list(zip(_prefill_packed(model, [_token_ids(model, rng, n) for n in lengths]), lengths))
    for batch_size, position in [(2, 0), (5, 4), (17, 8), (64, 63), (64, 0)]:
        cache = model.new_cache()
        cache.copy_from(target)
        rows = rng.sample(company, batch_size - 1)  # each decodes token 7 at its next position, as before
        rows.insert(position, (cache, 37))
        segments = [Segment(c, n, 1) for c, n in rows]
        logits = model.forward(
            _tensor(model, [7] * batch_size),
            _tensor(model, [n for _, n in rows]),
            segments,
            _tensor(model, list(range(batch_size))),
        )
        assert torch.equal(logits[position], solo), f"batch {batch_size}, position {position}"


def test_prefill_chunk_is_bit_identical_beside_decode_rows(models, device):
    model = models(device)
    rng = random.Random(1)
    prompt = _token_ids(model, rng, 300)
    alone, _ = _prefill(model, prompt, chunk=256)
    cache = model.new_cache()
    _prefill_first = model.forward(
        _tensor(model, prompt[:256]), _tensor(model, list(range(256))), [Segment(cache, 0, 256)], _tensor(model, [255])
    )
    others = []
    for _ in range(9):
        _, c = _prefill(model, _token_ids(model, rng, 20))
        others.append(Segment(c, 20, 1))
    tail = prompt[256:]
    segments = others[:4] + [Segment(cache, 256, len(tail))] + others[4:]
    tokens = [5] * 4 + tail + [5] * 5
    positions = [20] * 4 + list(range(256, 300)) + [20] * 5
    logits = model.forward(
        _tensor(model, tokens), _tensor(model, positions), segments, _tensor(model, [4 + len(tail) - 1])
    )
    assert torch.equal(logits[0], alone)
