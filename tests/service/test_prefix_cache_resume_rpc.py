"""Prefix cache and resume over real gRPC: cached_tokens and GetModelInfo's counters, a manual
resume equal to the uninterrupted stream, and INVALID_ARGUMENT naming the first wrong token."""

from __future__ import annotations

import grpc
import pytest

from seedstream.client import InvalidArgumentError
from seedstream.v1 import textgen_pb2 as pb

SYSTEM = "You are a careful assistant. " * 12
ARGS = dict(seed=31, temperature=0.9, top_p=0.95, max_new_tokens=12, ignore_eos=True)


def test_shared_prefix_is_reused_and_changes_nothing(client):
    before = client.model_info()
    first = client.generate(messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}], **ARGS)
    again = client.generate(messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}], **ARGS)
    after = client.model_info()
    assert again.token_ids == first.token_ids and again.logprobs == first.logprobs
    assert again.receipt.digest == first.receipt.digest
    assert again.cached_tokens >= 16 * ((first.prompt_tokens - 1) // 16) - 16 > 0
    assert after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens >= again.cached_tokens
    assert after.prefix_cache_miss_tokens > before.prefix_cache_miss_tokens
    assert 0 < after.prefix_cache_bytes <= after.prefix_cache_budget_bytes
    assert after.prefix_cache_block_tokens == 16
    context = "Rivers, lakes and seas: " * 8 + "The colour of the sky on a clear day is"
    scores = client.score([(context, " blue"), (context, " green"), (context, " blue")])
    cached = sorted(s.cached_tokens for s in scores)
    assert cached[0] == 0 and cached[1] >= 16 and cached[1] == cached[2]  # the context is computed once
    assert scores[0].logprobs == scores[2].logprobs  # with and without the cache


def test_manual_resume_continues_the_stream(client):
    full = list(client.generate_stream(prompt="A short poem about rivers:", **ARGS))
    tokens = [t for c in full for t in c.token_ids]
    rest = list(client.generate_stream(prompt="A short poem about rivers:", resume_token_ids=tokens[:5], **ARGS))
    joined = full[:5] + rest
    assert [t for c in joined for t in c.token_ids] == tokens
    assert "".join(c.text for c in joined) == "".join(c.text for c in full)
    assert rest[-1].receipt == full[-1].receipt
    assert rest[0].completion_tokens == 6


def test_wrong_resume_is_invalid_argument_naming_the_token(client, stub):
    tokens = client.generate(prompt="A short poem about rivers:", **ARGS).token_ids
    wrong = list(tokens[:4])
    wrong[2] = (wrong[2] + 1) % 1000
    with pytest.raises(InvalidArgumentError) as err:
        list(client.generate_stream(prompt="A short poem about rivers:", resume_token_ids=wrong, **ARGS))
    assert "resume_token_ids[2]" in str(err.value)
    request = pb.GenerateRequest(prompt="x", seed=1, n=2, resume_token_ids=[5])
    with pytest.raises(grpc.RpcError) as rpc_err:
        stub.Generate(request, timeout=60)
    assert rpc_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "resume_token_ids" in rpc_err.value.details()
