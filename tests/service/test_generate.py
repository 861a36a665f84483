"""Generate / GenerateStream over real gRPC on the real default model.

What a user relies on: the streamed deltas add up to the unary response byte
for byte, the seed is always returned and replays the run, and Tokenize /
GetModelInfo describe exactly what Generate uses.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from seedstream.client import AsyncClient, FinishReason, join_chunks
from seedstream.v1 import textgen_pb2 as pb

CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]

# Each case runs unary and streamed with the same seed.
CASES = {
    "sampled": dict(prompt="Once upon a time", seed=1234, temperature=0.8, top_k=50, top_p=0.9, max_new_tokens=24),
    "greedy-chat": dict(messages=CHAT, seed=7, temperature=0.0, max_new_tokens=24),
    # Non-Latin text: tokens that hold partial UTF-8 characters must not break byte equality.
    "unicode": dict(prompt="日本語の詩を書いてください。🌸 Emoji: ", seed=99, temperature=1.0, max_new_tokens=32),
    "stop-string": dict(prompt="Count: 1, 2, 3, 4,", seed=3, temperature=0.0, max_new_tokens=32, stop=[" 7", "\n\n"]),
    "top-logprobs": dict(prompt="The quick brown fox", seed=11, temperature=0.7, max_new_tokens=12, top_logprobs=3),
    "token-ids": dict(
        prompt_token_ids=[504, 3575, 282, 4649, 314],
        seed=5,
        temperature=1.0,
        max_new_tokens=16,
        repetition_penalty=1.2,
        presence_penalty=0.5,
        frequency_penalty=0.3,
        logit_bias={28: -5.0},
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_stream_concatenates_to_unary(client, case):
    kwargs = CASES[case]
    unary = client.generate(**kwargs)
    chunks = list(client.generate_stream(**kwargs))

    assert chunks and chunks[-1].finish_reason is not None
    assert all(c.finish_reason is None for c in chunks[:-1])
    joined = join_chunks(chunks)
    assert "".join(c.text for c in chunks).encode("utf-8") == unary.text.encode("utf-8")
    assert joined.token_ids == unary.token_ids
    assert joined.logprobs == unary.logprobs
    assert joined.top_logprobs == unary.top_logprobs
    assert joined.finish_reason == unary.finish_reason
    assert (joined.prompt_tokens, joined.completion_tokens) == (unary.prompt_tokens, unary.completion_tokens)
    assert unary.completion_tokens == len(unary.token_ids) == len(unary.logprobs) > 0
    assert joined.receipt.digest == unary.receipt.digest
    # Every stream message carries the seed; the seed is the one asked for.
    assert {c.seed for c in chunks} == {kwargs["seed"]} and unary.seed == kwargs["seed"]
    assert all(lp <= 0.0 for lp in unary.logprobs)
    if kwargs.get("top_logprobs"):
        assert len(unary.top_logprobs) == len(unary.token_ids)
        assert all(len(row) == kwargs["top_logprobs"] for row in unary.top_logprobs)
        for row in unary.top_logprobs:
            assert [a.logprob for a in row] == sorted((a.logprob for a in row), reverse=True)
    else:
        assert unary.top_logprobs == ()


def test_stop_string_is_cut(client):
    result = client.generate(**CASES["stop-string"])
    assert result.finish_reason is FinishReason.STOP_STRING
    assert " 7" not in result.text and "\n\n" not in result.text


def test_greedy_chat_answers(client):
    result = client.generate(**CASES["greedy-chat"])
    assert "Paris" in result.text
    assert result.finish_reason in (FinishReason.EOS, FinishReason.LENGTH)


@pytest.mark.slow
def test_seed_is_drawn_returned_and_replays(client):
    kwargs = dict(prompt="A short poem about the sea:", temperature=1.0, max_new_tokens=16)
    first = client.generate(**kwargs)
    second = client.generate(**kwargs)
    assert first.seed != second.seed  # drawn fresh each time, from [0, 2^64)
    assert 0 <= first.seed < 2**64

    replay = client.generate(seed=first.seed, **kwargs)
    assert replay.token_ids == first.token_ids and replay.text == first.text
    assert replay.receipt.digest == first.receipt.digest and replay.receipt.reproduces(first.receipt)

    # Streamed: the drawn seed is in the headers before any token, and on every message.
    stream = client.generate_stream(**kwargs)
    header_seed = stream.seed
    chunks = list(stream)
    assert header_seed == chunks[-1].seed and {c.seed for c in chunks} == {header_seed}
    assert client.generate(seed=header_seed, **kwargs).token_ids == join_chunks(chunks).token_ids


@pytest.mark.slow
def test_different_seed_or_sample_index_differs(client):
    kwargs = dict(prompt="A short poem about the sea:", temperature=1.0, max_new_tokens=16, seed=2024)
    base = client.generate(**kwargs)
    other_seed = client.generate(**{**kwargs, "seed": 2025})
    other_index = client.generate(**kwargs, sample_index=1)
    assert other_seed.token_ids != base.token_ids
    assert other_index.token_ids != base.token_ids
    assert base.receipt.differences(other_seed.receipt) == ["seed"]
    assert base.receipt.differences(other_index.receipt) == ["sample_index"]
    assert client.generate(**kwargs, sample_index=0).token_ids == base.token_ids


def test_receipt_describes_the_run(client):
    info = client.model_info()
    result = client.generate("Hello", seed=1, max_new_tokens=4, temperature=0.5, stop=["zz"])
    r = result.receipt
    assert (r.model_sha256, r.dtype, r.device, r.engine_version, r.sampler_version) == (
        info.model_sha256,
        info.dtype,
        info.device,
        info.engine_version,
        info.sampler_version,
    )
    assert r.seed == 1 and r.sampling.temperature == 0.5 and r.sampling.max_new_tokens == 4
    assert r.sampling.stop == ("zz",)
    # Defaults are filled in: top_p and repetition_penalty were not sent.
    assert r.sampling.top_p == 1.0 and r.sampling.repetition_penalty == 1.0 and r.sampling.top_k == 0
    assert len(r.digest) == 64 and len(r.input_sha256) == 64


def test_default_max_new_tokens_and_ignore_eos(client):
    info = client.model_info()
    # An EOS-prone chat with ignore_eos runs to the length limit; with a small explicit limit.
    result = client.generate(messages=CHAT, seed=1, temperature=0.0, max_new_tokens=40, ignore_eos=True)
    assert result.finish_reason is FinishReason.LENGTH and result.completion_tokens == 40
    assert info.default_max_new_tokens == 256


def test_stop_token(client):
    eos_free = client.generate("One two three", seed=4, temperature=0.0, max_new_tokens=8)
    stop_id = eos_free.token_ids[2]
    result = client.generate("One two three", seed=4, temperature=0.0, max_new_tokens=8, stop_token_ids=[stop_id])
    assert result.finish_reason is FinishReason.STOP_TOKEN
    assert result.token_ids == eos_free.token_ids[: eos_free.token_ids.index(stop_id) + 1]


def test_tokenize_matches_generate_input(client):
    ascii_text = "Bonjour, le monde!"
    tok = client.tokenize(ascii_text)
    assert len(tok.token_ids) == len(tok.tokens) > 0
    assert "".join(tok.tokens) == ascii_text

    text = "Bonjour, le monde! ✓ 日本"
    tok = client.tokenize(text)

    by_text = client.generate(text, seed=8, temperature=0.9, max_new_tokens=8)
    by_ids = client.generate(prompt_token_ids=list(tok.token_ids), seed=8, temperature=0.9, max_new_tokens=8)
    assert by_text.prompt_tokens == len(tok.token_ids)
    assert by_ids.token_ids == by_text.token_ids
    assert by_ids.receipt.input_sha256 == by_text.receipt.input_sha256

    chat = client.tokenize(messages=CHAT)
    assert chat.tokens[-1] == "\n" and "<|im_start|>" in chat.tokens  # rendered with the template
    by_chat = client.generate(messages=CHAT, seed=8, max_new_tokens=6)
    assert by_chat.prompt_tokens == len(chat.token_ids)
    assert (
        client.generate(prompt_token_ids=list(chat.token_ids), seed=8, max_new_tokens=6).token_ids == by_chat.token_ids
    )


def test_model_info(client):
    info = client.model_info()
    assert info.model_id.startswith("SmolLM2-135M")
    assert len(info.model_sha256) == 64
    assert info.vocab_size == 49152 and info.max_context >= 2048
    assert info.dtype == "float32" and info.device == "cpu"
    assert info.eos_token_ids and info.has_chat_template
    assert info.engine_version and info.sampler_version
    assert info.max_new_tokens_limit >= info.default_max_new_tokens


def test_raw_grpc_request(stub):
    """What a client in any language sends: plain protobuf, no seedstream client."""
    request = pb.GenerateRequest(prompt="Hello there", seed=42, temperature=0.0, max_new_tokens=5)
    response, call = stub.Generate.with_call(request, timeout=60)
    assert call.code() == grpc.StatusCode.OK
    assert response.seed == 42 and response.finish_reason != pb.FINISH_REASON_UNSPECIFIED
    assert len(response.token_ids) == response.completion_tokens <= 5
    messages = list(stub.GenerateStream(request, timeout=60))
    assert [t for m in messages for t in m.token_ids] == list(response.token_ids)
    assert messages[-1].HasField("receipt") and messages[-1].receipt.digest == response.receipt.digest
    assert not any(m.HasField("receipt") for m in messages[:-1])


@pytest.mark.slow  # 16 concurrent streams and their solo runs
def test_concurrent_streams_match_solo_runs(server, client):
    """Requests running together over gRPC give what each gives alone (AsyncClient)."""
    requests = [
        dict(prompt=f"Story {i}: once upon a time", seed=100 + i, temperature=0.9, top_p=0.95, max_new_tokens=8 + 3 * i)
        for i in range(6)
    ]
    solo = [client.generate(**r) for r in requests]

    async def together():
        async with AsyncClient(server.address, timeout=120) as ac:

            async def stream(r):
                async with ac.generate_stream(**r) as s:
                    return join_chunks([c async for c in s])

            return await asyncio.gather(*[stream(r) if i % 2 else ac.generate(**r) for i, r in enumerate(requests)])

    for alone, mixed in zip(solo, asyncio.run(together())):
        assert mixed.token_ids == alone.token_ids and mixed.text == alone.text
