"""n samples per request, prompt echo and logprobs modes, over real gRPC on the default model."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math

import pytest

from seedstream.client import InvalidArgumentError, join_chunks

PROMPT = "Once upon a time, in a small village,"
SAMPLING = dict(temperature=0.9, top_k=50, top_p=0.95, max_new_tokens=8, seed=4242)


def _tokens(result):
    return [(s.sample_index, s.token_ids, s.text, s.logprobs, s.finish_reason, s.seed) for s in result.samples]


def test_sample_zero_is_the_n1_result_and_the_set_is_reproducible(client):
    one = client.generate(PROMPT, **SAMPLING)
    four = client.generate(PROMPT, n=4, **SAMPLING)
    again = client.generate(PROMPT, n=4, **SAMPLING)
    assert [s.sample_index for s in four.samples] == [0, 1, 2, 3]
    assert _tokens(four)[0] == _tokens(one)[0]
    assert (four.token_ids, four.text) == (one.token_ids, one.text)  # top level repeats sample 0
    assert _tokens(four) == _tokens(again)
    assert len({s.token_ids for s in four.samples}) > 1, "samples of one seed should differ"
    # Receipts: one per sample, differing only in sample_index.
    for s in four.samples:
        assert s.receipt.sample_index == s.sample_index
    assert four.samples[0].receipt.differences(four.samples[1].receipt) == ["sample_index"]


def test_together_equals_one_by_one_and_concurrent(client):
    together = client.generate(PROMPT, n=4, **SAMPLING)
    one_by_one = [client.generate(PROMPT, sample_index=j, **SAMPLING) for j in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        concurrent_ = list(pool.map(lambda j: client.generate(PROMPT, sample_index=j, **SAMPLING), range(4)))
    expected = _tokens(together)
    assert [_tokens(r)[0] for r in one_by_one] == expected
    assert [_tokens(r)[0] for r in concurrent_] == expected
    # n composes with sample_index: samples 2 and 3 are samples 0 and 1 of a request starting at 2.
    assert _tokens(client.generate(PROMPT, n=2, sample_index=2, **SAMPLING)) == expected[2:]


def test_streaming_n_samples_interleaves_tagged_deltas(client):
    unary = client.generate(PROMPT, n=3, **SAMPLING)
    chunks = list(client.generate_stream(PROMPT, n=3, **SAMPLING))
    assert {c.sample_index for c in chunks} == {0, 1, 2}
    assert sum(c.finish_reason is not None for c in chunks) == 3
    assert all((c.receipt is not None) == (c.finish_reason is not None) for c in chunks)
    joined = join_chunks(chunks)
    assert _tokens(joined) == _tokens(unary)
    strip = lambda r: dataclasses.replace(r, request_id="", samples=())  # noqa: E731
    assert [strip(s) for s in joined.samples] == [strip(s) for s in unary.samples]


def test_n_out_of_range_is_invalid(client):
    for n in (0, 65):
        with pytest.raises(InvalidArgumentError) as err:
            client.generate(PROMPT, n=n, **SAMPLING)
        assert err.value.field == "n"
    with pytest.raises(InvalidArgumentError) as err:
        client.generate(PROMPT, n=2, sample_index=2**32 - 1, **SAMPLING)
    assert err.value.field == "n"


def test_prompt_echo_equals_scoring(client, server):
    engine = server.state.engine
    result = client.generate(PROMPT, echo_prompt_logprobs=True, **SAMPLING)
    ids = engine.tokenize(PROMPT, True)
    assert result.prompt_token_ids == tuple(ids)
    assert len(result.prompt_logprobs) == len(ids) - 1
    assert result.prompt_logprobs == client.score([(ids[:1], ids[1:])])[0].logprobs
    plain = client.generate(PROMPT, **SAMPLING)
    assert plain.prompt_logprobs == () and plain.token_ids == result.token_ids  # echo changes no token
    chunks = list(client.generate_stream(PROMPT, echo_prompt_logprobs=True, **SAMPLING))
    assert chunks[0].prompt_logprobs == result.prompt_logprobs
    assert all(not c.prompt_logprobs for c in chunks[1:])
    assert join_chunks(chunks).prompt_logprobs == result.prompt_logprobs


def test_logprobs_modes(client):
    raw = client.generate(PROMPT, top_logprobs=3, **SAMPLING)
    processed = client.generate(PROMPT, top_logprobs=3, logprobs_mode="processed", **SAMPLING)
    assert processed.token_ids == raw.token_ids  # the mode never changes the tokens
    assert processed.receipt.digest == raw.receipt.digest
    assert processed.logprobs != raw.logprobs
    # Truncation and temperature < 1 concentrate the mass: processed >= raw for the chosen tokens here.
    for p, r in zip(processed.logprobs, raw.logprobs):
        assert math.isfinite(p) and math.isfinite(r) and r <= 0 and p <= 0
    assert sum(processed.logprobs) > sum(raw.logprobs)
    assert processed.top_logprobs == raw.top_logprobs  # alternatives stay raw
    greedy = client.generate(PROMPT, temperature=0, max_new_tokens=5, logprobs_mode="processed")
    assert greedy.logprobs == (0.0,) * len(greedy.token_ids)
    streamed = join_chunks(client.generate_stream(PROMPT, logprobs_mode="processed", **SAMPLING))
    assert streamed.logprobs == processed.logprobs
    with pytest.raises(InvalidArgumentError, match="logprobs_mode"):
        client.generate(PROMPT, logprobs_mode="cooked", **SAMPLING)
