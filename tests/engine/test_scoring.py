"""Scoring (log-likelihood) and prompt echo: match transformers; batch-invariant."""

import asyncio
import os

import pytest
import torch

from seedstream.sampler import SamplingParams
from seedstream.server.engine import GenerationRequest, ParamError, ScoreRequest
from seedstream.server.engine.loader import default_model_path

PAIRS = [
    ("The capital of France is", " Paris"),
    ("The capital of France is ", "Paris"),  # trailing space moves to the continuation
    ("Question: 2+2=?\nAnswer:", " 4"),
    ("Question: 2+2=?\nAnswer:", " five"),
    ("", "Hello world"),  # empty context: the prefix token
    ("naïve café", " au lait ☕"),
    ("日本の首都は", "東京です"),
    ("Emoji test 🎲", " 🎉🎉 party"),
    ("A" * 5, " AAAA"),
    ("def add(a, b):\n    return", " a + b"),
    ("The quick brown fox", " jumps over the lazy dog."),
    ("Once upon a time", ", there was a dragon named Smol."),
    ("Translate to French: cheese =>", " fromage"),
    ("1, 2, 3, 4,", " 5, 6"),
    ("The opposite of hot is", " cold"),
    ("The opposite of hot is", " warm"),
    ("\n\n", "Indented\n  text"),
    ("Long context: " + "lorem ipsum dolor sit amet " * 60, "consectetur adipiscing"),
    ("Very long context: " + "the cat sat on the mat. " * 150, " The dog"),
]


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    return AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    )


def _reference(hf_model, context_ids, continuation_ids):
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(hf_model(ids).logits[0].float(), dim=-1)  # [T, V]
    rows = logprobs[len(context_ids) - 1 : -1]  # predictions of the continuation tokens
    target = torch.tensor(continuation_ids)
    return rows.gather(1, target[:, None])[:, 0], bool((rows.argmax(-1) == target).all())


@pytest.mark.slow  # loads the transformers model
def test_scores_match_transformers_and_do_not_depend_on_concurrency(engine_factory, hf_model):
    engine = engine_factory()

    async def scenario():
        await engine.start()
        try:
            requests = [ScoreRequest(*map(tuple, engine.encode_pair(c, x))) for c, x in PAIRS]
            one_by_one = [await engine.score(engine.validate_score(r)) for r in requests]
            together = await asyncio.gather(*(engine.score(engine.validate_score(r)) for r in requests))
            return requests, one_by_one, together
        finally:
            await engine.stop()

    requests, one_by_one, together = asyncio.run(scenario())
    greedy_seen = set()
    for req, a, b in zip(requests, one_by_one, together):
        # cached_tokens may differ (the prefix cache warms up); the scores themselves may not
        assert (a.logprobs, a.greedy_ids, a.is_greedy) == (b.logprobs, b.greedy_ids, b.is_greedy), (
            "scores differ between one-by-one and concurrent scoring"
        )
        ref, ref_greedy = _reference(hf_model, list(req.context_ids), list(req.continuation_ids))
        torch.testing.assert_close(torch.tensor(a.logprobs), ref, atol=1e-4, rtol=0)
        assert a.is_greedy == ref_greedy
        greedy_seen.add(a.is_greedy)
    assert greedy_seen == {True, False}


def test_encode_pair_follows_the_harness_rules(engine_factory):
    engine = engine_factory()
    ctx, cont = engine.encode_pair("The capital of France is ", "Paris")
    assert ctx == engine.tokenize("The capital of France is")
    assert ctx + cont == engine.tokenize("The capital of France is Paris")
    ctx, cont = engine.encode_pair("", "Hello")
    assert len(ctx) == 1 and cont == engine.tokenize("Hello")


def test_prompt_echo_logprobs_equal_scores(engine_factory):
    engine = engine_factory()
    prompt = tuple(engine.tokenize("The capital of France is Paris"))

    async def scenario():
        await engine.start()
        try:
            req = GenerationRequest(
                prompt, SamplingParams(temperature=0.0, seed=0), max_new_tokens=1, prompt_logprobs=True
            )
            first = [c async for c in engine.generate(engine.validate(req)[0])][0]
            score = await engine.score(engine.validate_score(ScoreRequest(prompt[:1], prompt[1:])))
            return first.prompt_logprobs, score
        finally:
            await engine.stop()

    echoed, score = asyncio.run(scenario())
    assert echoed[0] is None and len(echoed) == len(prompt)
    assert echoed[1:] == list(score.logprobs)


def test_invalid_score_requests_name_the_field(engine_factory):
    engine = engine_factory()

    async def scenario():
        await engine.start()
        try:
            with pytest.raises(ParamError, match="continuation"):
                await engine.score(engine.validate_score(ScoreRequest((1, 2), ())))
            with pytest.raises(ParamError, match="context"):
                await engine.score(engine.validate_score(ScoreRequest((10**7,), (1,))))
        finally:
            await engine.stop()

    asyncio.run(scenario())
