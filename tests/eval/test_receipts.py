"""Reproducibility receipts: equal for identical setups, different when the dtype or the model differs."""

from __future__ import annotations

import pytest

from seedstream.client import Client, receipts_match

PROMPT = "The three primary colors are"
REQUEST = dict(seed=99, temperature=0.7, top_p=0.9, max_new_tokens=6)
PAIRS = [("The capital of France is", " Paris"), ("2 + 2 =", " 4")]


@pytest.fixture(scope="module")
def clients(server, bf16_server, tiny_server):
    with (
        Client(server.address, timeout=300) as a,
        Client(bf16_server.address, timeout=300) as b,
        Client(tiny_server.address, timeout=300) as c,
    ):
        yield {"fp32": a, "bf16": b, "tiny": c}


def test_identical_setups_match(clients, server):
    c = clients["fp32"]
    first, second = c.generate(PROMPT, **REQUEST), c.generate(PROMPT, **REQUEST)
    assert receipts_match(first.receipt, second.receipt) and first.receipt.differences(second.receipt) == []
    assert first.token_ids == second.token_ids
    streamed = [ch for ch in c.generate_stream(PROMPT, **REQUEST)][-1].receipt
    assert receipts_match(first.receipt, streamed)
    info = server.state.engine.info
    r = first.receipt
    assert (r.model_sha256, r.model_identity, r.dtype, r.device, r.engine_version, r.sampler_version) == (
        info.model_sha256,
        info.model_identity,
        info.dtype,
        info.device,
        info.engine_version,
        info.sampler_version,
    )
    assert r.seed == 99 and r.sampling.temperature == 0.7 and r.sampling.top_p == 0.9 and r.sampling.max_new_tokens == 6
    assert r.sampling.top_k == 0 and r.sampling.repetition_penalty == 1.0  # defaults filled in
    assert receipts_match(c.score(PAIRS).receipt, c.score(PAIRS).receipt)
    assert receipts_match(c.score_rolling(PROMPT).receipt, c.score_rolling(PROMPT).receipt)


def test_any_determining_change_is_visible(clients):
    c = clients["fp32"]
    base = c.generate(PROMPT, **REQUEST).receipt
    assert base.differences(c.generate(PROMPT, **{**REQUEST, "seed": 100}).receipt) == ["seed"]
    assert base.differences(c.generate(PROMPT, **{**REQUEST, "temperature": 0.8}).receipt) == ["sampling.temperature"]
    assert base.differences(c.generate(PROMPT + " red", **REQUEST).receipt) == ["input_sha256"]
    assert not receipts_match(c.score(PAIRS).receipt, c.score(PAIRS[:1]).receipt)
    assert not receipts_match(base, None)


def test_dtype_and_model_differences_are_visible(clients):
    fp32 = clients["fp32"].generate(PROMPT, **REQUEST).receipt
    bf16 = clients["bf16"].generate(PROMPT, **REQUEST).receipt
    tiny = clients["tiny"].generate(PROMPT, **REQUEST).receipt
    # bfloat16 runs on the torch path: another dtype, weight format and forward pass
    assert not receipts_match(fp32, bf16) and fp32.differences(bf16) == ["dtype", "weight_format", "engine_version"]
    # another model: other weights, so another weights hash and another identity
    assert not receipts_match(fp32, tiny) and fp32.differences(tiny) == ["model_sha256", "model_identity"]
    assert fp32.digest != bf16.digest != tiny.digest
    scores = {name: c.score(PAIRS).receipt for name, c in clients.items()}
    assert scores["fp32"].differences(scores["bf16"]) == ["dtype", "weight_format", "engine_version"]
    assert scores["fp32"].differences(scores["tiny"]) == ["model_sha256", "model_identity"]
    # Same build, same request: still matching after a fresh connection.
    with Client(clients["bf16"].target) as again:
        assert receipts_match(bf16, again.generate(PROMPT, **REQUEST).receipt)
