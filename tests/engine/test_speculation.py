"""Speculative decoding on the real default model (the cuda case: device_cases.TINY_LLAMA): the same streams as
one token per step, with drafts accepted and rejected along the way."""

import asyncio

import pytest

from seedstream.sampler import SamplingParams
from seedstream.server.engine import GenerationRequest

CODE = """def search(items, target):
    lo, hi = 0, len(items) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1"""

# Texts that make the model repeat its prompt or itself, so drafts are accepted as well as rejected.
PROMPTS = [
    "Add type hints to this Python function and return the whole function:\n" + CODE,
    "Repeat the following sentence three times: The quick brown fox jumps over the lazy dog.",
    "Summarize this text: The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, "
    "France. It is named after the engineer Gustave Eiffel, whose company designed and built the tower.",
]

SAMPLING = [
    SamplingParams(temperature=0.0, seed=1),
    SamplingParams(temperature=0.8, top_k=50, top_p=0.9, seed=2),
    SamplingParams(temperature=0.7, top_p=0.95, min_p=0.05, seed=3),
    SamplingParams(temperature=1.0, top_k=20, repetition_penalty=1.3, seed=4),
    SamplingParams(temperature=0.9, presence_penalty=0.5, frequency_penalty=0.5, seed=2**64 - 1),
]


def _requests(engine, count: int, max_new_tokens: int):
    """The first `count` of: every sampling mix on every prompt, with the options that read a step's own state: top alternatives,
    processed logprobs, min_new_tokens (EOS suppressed per step), stop strings and a short max_new_tokens."""
    requests = []
    for p, text in enumerate(PROMPTS):
        ids = tuple(engine.render_chat([{"role": "user", "content": text}]))
        for s, params in enumerate(SAMPLING):
            extra = [
                dict(top_logprobs=3),
                dict(logprobs_mode="processed", min_new_tokens=max_new_tokens * 5 // 8),
                dict(stop=("mid + 1", "fox jumps over the lazy dog.\n")),
                dict(max_new_tokens=7),
                dict(sample_index=1, top_logprobs=1),
            ][(p + s) % 5]
            requests.append(GenerationRequest(ids, params, **{"max_new_tokens": max_new_tokens, **extra}))
    return requests[:count]


async def _stream(engine, request):
    chunks = [c async for c in engine.generate(engine.validate(request)[0])]
    return [
        (c.token_ids, c.logprobs, [[(t.token_id, t.logprob) for t in tops] for tops in c.top_logprobs], c.text)
        for c in chunks
    ], chunks[-1].finish_reason


def _streams(engine, size: tuple[int, int], *concurrency: int):
    """Each request's chunks (size: how many requests, max_new_tokens), `c` requests at a time, for each c of
    `concurrency` in turn."""

    async def scenario():
        await engine.start()
        try:
            requests = _requests(engine, *size)
            runs = []
            for c in concurrency:
                out = []
                for i in range(0, len(requests), c):
                    out += await asyncio.gather(*(_stream(engine, r) for r in requests[i : i + c]))
                runs.append((out, engine.speculation()))
            return runs
        finally:
            await engine.stop()

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    "config,size",
    [
        pytest.param({}, (15, 64), marks=pytest.mark.slow),  # 15 s: 15 prompts x 64 tokens, twice
        pytest.param({"activations": "int8"}, (15, 64), marks=pytest.mark.slow),
        pytest.param({"backend": "torch"}, (3, 16), marks=pytest.mark.slow),  # ~15x slower per token: fewer
    ],
    ids=["kernels", "kernels-int8", "torch"],
)
def test_speculation_changes_no_chunk(engine_factory, device, config, size):
    """Chunk for chunk (tokens, logprobs, top alternatives, text, finish reason) the streams of one token
    per step, alone and three at a time (so a step mixes sequences with and without drafts)."""
    if device != "cpu" and config.get("backend") != "torch":
        pytest.skip("the kernels are CPU-only; on CUDA the torch case runs")
    if device == "cuda":  # the tiny model: quick on any path; its peaked streams need all 15 to reject a draft
        size = (15, 64)
    [(plain, _)] = _streams(engine_factory(device=device, **config), size, 1)
    (alone, stats), (together, _) = _streams(engine_factory(speculative_tokens=5, device=device, **config), size, 1, 3)
    for i, (want, got, shared) in enumerate(zip(plain, alone, together)):
        assert got == want, f"request {i}: speculation changed the stream"
        assert shared == want, f"request {i}: speculation beside others changed the stream"
    assert stats.tokens == 5
    assert 0 < stats.accepted < stats.drafted, "drafts were both kept and rejected"


def test_speculation_stops_where_the_stream_does(engine_factory):
    """A draft running past a stop string, EOS or max_new_tokens is cut where one token per step stops."""
    engine = engine_factory(speculative_tokens=8)
    greedy = SamplingParams(temperature=0.0, seed=0)
    text = "Repeat the following sentence three times: The quick brown fox jumps over the lazy dog."

    async def scenario():
        await engine.start()
        try:
            ids = tuple(engine.render_chat([{"role": "user", "content": text}]))
            full, _ = await _stream(engine, GenerationRequest(ids, greedy, max_new_tokens=60))
            tokens = [t for c in full for t in c[0]]
            cut, finish = await _stream(engine, GenerationRequest(ids, greedy, max_new_tokens=len(tokens) - 3))
            stopped, why = await _stream(engine, GenerationRequest(ids, greedy, max_new_tokens=60, stop=("lazy",)))
            return tokens, cut, finish, stopped, why
        finally:
            await engine.stop()

    tokens, cut, finish, stopped, why = asyncio.run(scenario())
    assert engine.speculation().accepted > 0
    assert [t for c in cut for t in c[0]] == tokens[:-3] and finish.value == "length"
    assert why.value == "stop_string" and "lazy" not in "".join(c[3] for c in stopped)
    assert "The quick brown fox jumps over the" in "".join(c[3] for c in stopped)
