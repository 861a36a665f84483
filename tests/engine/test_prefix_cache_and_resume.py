"""The prefix cache changes no token or score (cold, warm, evicted, concurrent); resumed streams
continue exactly; a resume that does not match names the first differing token."""

import asyncio
import dataclasses
import random

import pytest

from seedstream.sampler import SamplingParams
from seedstream.server.engine import Engine, EngineConfig, GenerationRequest, ParamError, ScoreRequest

run = asyncio.run
SYSTEM = tuple(range(1000, 1000 + 180))  # a shared "system prompt": 11 whole cache blocks and a bit


@pytest.fixture(scope="module")
def make(weights):
    def build(**overrides):
        return Engine(weights, EngineConfig(**overrides))

    return build


async def _stream(engine, request):
    chunks = []
    async for chunk in engine.generate(engine.validate(request)[0]):
        chunks.append(chunk)
    return chunks


def _tokens(chunks):
    return [t for c in chunks for t in c.token_ids]


async def _served(engine, work):
    await engine.start()
    try:
        return await work()
    finally:
        await engine.stop()


def _workload(rng):
    """Chats sharing SYSTEM, and lm-eval style multiple choice: 4 continuations per context."""
    gens = []
    for i in range(4):
        user = tuple(rng.randrange(200, 40000) for _ in range(rng.randrange(3, 40)))
        params = SamplingParams(temperature=rng.choice([0.0, 0.8]), top_p=0.9, seed=i)
        gens.append(GenerationRequest(SYSTEM + user, params, max_new_tokens=6, ignore_eos=True))
    scores = []
    for _ in range(2):
        context = SYSTEM[:40] + tuple(rng.randrange(200, 40000) for _ in range(rng.randrange(10, 60)))
        for _ in range(4):
            scores.append(ScoreRequest(context, tuple(rng.randrange(200, 40000) for _ in range(rng.randrange(1, 5)))))
    return gens, scores


async def _workload_results(engine, gens, scores, together):
    jobs = [_stream(engine, g) for g in gens] + [engine.score(engine.validate_score(s)) for s in scores]
    results = await asyncio.gather(*jobs) if together else [await job for job in jobs]
    return [_tokens(r) for r in results[: len(gens)]] + [(r.logprobs, r.greedy_ids) for r in results[len(gens) :]]


def _run_workload(engine, gens, scores, phases):
    """Serve `engine` once and run the workload once per phase (together: all requests at once)."""

    async def work():
        return [await _workload_results(engine, gens, scores, together) for together in phases]

    return run(_served(engine, work))


@pytest.mark.slow
def test_cache_cold_warm_evicted_and_concurrent_change_nothing(make):
    gens, scores = _workload(random.Random(5))
    [reference] = _run_workload(make(prefix_cache_mib=0), gens, scores, [False])
    cached = make()
    cold, warm = _run_workload(cached, gens, scores, [False, True])  # then warm, and concurrent
    stats = cached.prefix_cache.stats
    assert stats.hit_tokens > 0 and stats.evicted_blocks == 0
    tiny = make(prefix_cache_mib=2)  # about 2 blocks: constant eviction
    [evicted] = _run_workload(tiny, gens, scores, [True])
    assert tiny.prefix_cache.stats.evicted_blocks > 0 and tiny.prefix_cache.stats.bytes <= 2 * 2**20
    [concurrent_cold] = _run_workload(make(), gens, scores, [True])
    assert cold == reference
    assert warm == reference
    assert evicted == reference
    assert concurrent_cold == reference


def test_multiple_choice_computes_each_context_once(make):
    engine = make()
    context = tuple(range(2000, 2000 + 200))
    pairs = [ScoreRequest(context, (50 + i, 60 + i)) for i in range(4)]

    async def work():
        return await asyncio.gather(*(engine.score(engine.validate_score(p)) for p in pairs))

    results = run(_served(engine, work))
    reusable = (len(context) - 1) // 16 * 16  # whole blocks before the first scored row
    assert engine.prefill_tokens == 4 * (len(context) + 2) - 3 * reusable
    assert sorted(r.cached_tokens for r in results) == [0, reusable, reusable, reusable]


SETTINGS = [
    SamplingParams(temperature=0.0, seed=1),
    SamplingParams(temperature=1.0, seed=2),
    SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=3),
    SamplingParams(temperature=1.1, min_p=0.05, repetition_penalty=1.3, presence_penalty=0.4, seed=2**64 - 1),
]


@pytest.mark.parametrize("params", SETTINGS, ids=lambda p: f"seed{p.seed}")
def test_resumed_stream_equals_the_uninterrupted_one(make, params):
    engine = make()
    rng = random.Random(params.seed)
    prompt = SYSTEM[:30] + tuple(rng.randrange(200, 40000) for _ in range(12))
    request = GenerationRequest(prompt, params, max_new_tokens=24, min_new_tokens=3, stop=("zzqx",), top_logprobs=2)
    cuts = sorted({1, 2, rng.randrange(3, 23), 23})

    async def work():
        full = await _stream(engine, request)
        tokens = _tokens(full)
        resumed = {}
        for k in cuts:
            if k < len(tokens):
                resumed[k] = await _stream(engine, dataclasses.replace(request, resume_token_ids=tuple(tokens[:k])))
        return full, resumed

    full, resumed = run(_served(engine, work))
    assert resumed
    for k, rest in resumed.items():
        joined = full[:k] + rest
        assert _tokens(joined) == _tokens(full), f"cut at {k}"
        assert [c.logprobs for c in joined] == [c.logprobs for c in full]
        assert [c.top_logprobs for c in joined] == [c.top_logprobs for c in full]
        assert "".join(c.text for c in joined) == "".join(c.text for c in full)
        assert rest[-1].finish_reason == full[-1].finish_reason
        assert rest[-1].completion_tokens == full[-1].completion_tokens


def test_resume_mismatch_names_the_first_differing_token(make):
    engine = make()
    request = GenerationRequest(
        SYSTEM[:20], SamplingParams(temperature=1.0, seed=9), max_new_tokens=12, ignore_eos=True
    )

    async def work():
        tokens = _tokens(await _stream(engine, request))
        wrong = tokens[:5]
        wrong[3] = (wrong[3] + 1) % 49152
        with pytest.raises(ParamError) as err:
            await _stream(engine, dataclasses.replace(request, resume_token_ids=tuple(wrong)))
        other_seed = dataclasses.replace(
            request, sampling=SamplingParams(temperature=1.0, seed=10), resume_token_ids=tuple(tokens[:5])
        )
        with pytest.raises(ParamError) as err2:
            await _stream(engine, other_seed)
        return err.value, err2.value

    err, err2 = run(_served(engine, work))
    assert err.field == "resume_token_ids" and "resume_token_ids[3]" in str(err)
    assert err2.field == "resume_token_ids" and "resume_token_ids[" in str(err2)


@pytest.mark.parametrize(
    "resume,max_new,message",
    [
        ((1, 2, 3), 3, "max_new_tokens"),
        ((1, 10**6), 8, "resume_token_ids[1]"),
        ((1, 2), 8, "ends the stream"),  # 2 is a stop token below
    ],
)
def test_resume_validation(make, resume, max_new, message):
    engine = make()
    request = GenerationRequest(
        (5, 6, 7), SamplingParams(seed=1), max_new_tokens=max_new, stop_token_ids=(2,), resume_token_ids=resume
    )
    with pytest.raises(ParamError) as err:
        engine.validate(request)
    assert err.value.field == "resume_token_ids" and message in str(err.value)
