"""New architectures served whole: a model folder through the loader, the engine and the sampler, on the
kernels and on the torch path, against transformers' own forward and greedy generation on the same folder."""

from __future__ import annotations

import asyncio

import pytest
import torch
from arch_models import build_hf_model, hf_logprobs, prompt
from tiny_tokenizer import save_tiny_tokenizer

from seedstream.sampler import SamplingParams
from seedstream.server.engine import EngineConfig, GenerationRequest, load_engine

pytestmark = pytest.mark.slow  # a conversion and two engines per architecture

# one per family, together using every option: windows, soft caps, sandwich and q/k norms, local and global
# RoPE, NoPE layers, fused projections with partial rotary, biases, llama3 RoPE, an odd vocabulary
SERVED = ["gemma2", "gemma3", "qwen2-window", "qwen3", "phi3-partial-rotary", "smollm3-nope", "llama-rope-llama3"]
GREEDY_TOKENS = 32
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=SERVED)
def served(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    model = build_hf_model(request.param)
    model.save_pretrained(str(folder))
    save_tiny_tokenizer(folder, model.config.vocab_size)
    return request.param, model, folder


@torch.no_grad()
def hf_greedy(model, ids: list[int], count: int) -> list[int]:
    """transformers' argmax, one whole forward per token (EOS is a token like any other here: the requests
    ignore it, and generate() would suppress it instead)."""
    out = list(ids)
    for _ in range(count):
        out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids) :]


async def _collect(engine, request):
    tokens, logprobs, prompt_logprobs = [], [], None
    async for chunk in engine.generate(engine.validate(request)[0]):
        tokens += chunk.token_ids
        logprobs += chunk.logprobs
        prompt_logprobs = prompt_logprobs or chunk.prompt_logprobs
    return tokens, logprobs, prompt_logprobs


def _serve(engine, requests):
    async def scenario():
        await engine.start()
        try:
            alone = [await _collect(engine, r) for r in requests]
            together = await asyncio.gather(*[_collect(engine, r) for r in requests])
            return alone, list(together)
        finally:
            await engine.stop()

    return asyncio.run(scenario())


@pytest.mark.parametrize("backend", ["kernels", "torch"])
def test_served_logprobs_and_greedy_tokens_match_transformers(served, backend):
    name, model, folder = served
    engine = load_engine(EngineConfig(model=str(folder), backend=backend), progress=lambda msg: None)
    vocab = model.config.vocab_size
    ids = prompt(40, vocab, seed=5)  # longer than the windows (8, 16) and than one kernel attention block (32)
    greedy = GenerationRequest(
        tuple(ids),
        SamplingParams(temperature=0.0, seed=1),
        max_new_tokens=GREEDY_TOKENS,
        ignore_eos=True,
        prompt_logprobs=True,
    )
    others = [
        GenerationRequest(
            tuple(prompt(n, vocab, seed=n)),
            SamplingParams(temperature=0.9, top_p=0.9, seed=n),
            max_new_tokens=12,
            ignore_eos=True,
        )
        for n in range(3, 10)
    ]
    alone, together = _serve(engine, [greedy, *others])
    assert alone == together, f"{name}/{backend}: a request alone differs from it among 8 concurrent ones"
    tokens, logprobs, prompt_logprobs = alone[0]
    expected = hf_greedy(model, ids, GREEDY_TOKENS)
    assert tokens == expected, f"{name}/{backend}: greedy tokens differ from transformers'"
    reference = hf_logprobs(model, ids + tokens[:-1])
    positions = torch.arange(1, len(ids) + len(tokens))
    chosen = reference[positions - 1, torch.tensor(ids[1:] + tokens)]
    ours = torch.tensor(prompt_logprobs[1:] + logprobs, dtype=torch.float32)
    diff = (ours - chosen).abs().max().item()
    assert diff <= TOLERANCE, f"{name}/{backend}: max |logprob difference| {diff:.2e} against transformers"
