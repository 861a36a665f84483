"""Score and ScoreRolling over real gRPC on the default model: against transformers, the harness's
tokenization rules and windows, and the engine's batch invariance."""

from __future__ import annotations

import concurrent.futures
import math

import pytest
import torch

from seedstream.client import InvalidArgumentError

PAIRS = [
    ("The capital of France is", " Paris"),
    ("The capital of France is ", "Paris"),  # trailing space moves to the continuation
    ("The capital of France is", " London"),
    ("Question: 2+2=?\nAnswer:", " 4"),
    ("Question: 2+2=?\nAnswer:", " five"),
    ("", "Hello world"),  # empty context: the prefix token
    ("", " leading space"),
    ("naïve café", " au lait ☕"),
    ("日本の首都は", "東京です"),
    ("Привет, как", " дела?"),
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
    ("Tabs\tand", "\tspaces  "),
    ("x", " y"),
    ("The sun rises in the", " east"),
    ("The sun rises in the", " west"),
    ("Water boils at 100 degrees", " Celsius"),
    ("Long context: " + "lorem ipsum dolor sit amet " * 60, "consectetur adipiscing"),
    ("Very long context: " + "the cat sat on the mat. " * 150, " The dog"),
    ("Mixed: " + "数字 123 and words " * 40, " end"),
    ("Code:\n" + "for i in range(10):\n    print(i)\n" * 20, "print('done')"),
    ("Q: What color is grass?\nA:", " Green"),
]


@pytest.fixture(scope="module")
def hf_model(server):
    from transformers import AutoConfig, AutoModelForCausalLM

    from seedstream.server.engine.loader import load_weights

    weights = load_weights(None, progress=lambda msg: None)
    config = dict(weights.config)
    cfg = AutoConfig.for_model(config.pop("model_type", "llama"), **config)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(weights.state_dict, strict=False)
    model.tie_weights()
    return model.eval()


def _reference(model, ctx, cont):
    with torch.inference_mode():
        logits = model(torch.tensor([list(ctx) + list(cont)])).logits[0].float()
    rows = torch.log_softmax(logits[len(ctx) - 1 : -1], dim=-1)
    target = torch.tensor(list(cont))
    return rows.gather(1, target[:, None])[:, 0], bool((rows.argmax(-1) == target).all())


@pytest.mark.slow  # loads the transformers model
def test_text_pairs_match_transformers_and_the_harness_split(client, server, hf_model):
    engine = server.state.engine
    scores = client.score(PAIRS)
    assert len(scores) == len(PAIRS)
    greedy = set()
    for (context, continuation), s in zip(PAIRS, scores):
        ctx, cont = engine.encode_pair(context, continuation)
        assert s.continuation_token_ids == tuple(cont) and s.context_tokens == len(ctx)
        assert s.continuation_tokens == len(cont) == len(s.logprobs) == len(s.greedy_token_ids)
        ref, ref_greedy = _reference(hf_model, ctx, cont)
        torch.testing.assert_close(torch.tensor(s.logprobs, dtype=torch.float32), ref, atol=1e-4, rtol=0)
        assert s.is_greedy == ref_greedy
        assert s.is_greedy == (s.greedy_token_ids == s.continuation_token_ids)
        assert math.isclose(s.logprob, math.fsum(s.logprobs), abs_tol=1e-9)
        assert all(math.isfinite(x) and x <= 0 for x in s.logprobs)
        greedy.add(s.is_greedy)
    assert greedy == {True, False}
    assert scores.receipt.model_sha256 == engine.info.model_sha256


def test_a_continuation_without_tokens_of_its_own_scores_zero(client, server):
    engine = server.state.engine
    assert engine.encode_pair("x", "y")[1] == []  # "xy" is one token
    for s in client.score([("x", "y"), ("abc", "")]):
        assert s.continuation_tokens == 0 and s.logprob == 0.0 and s.is_greedy and s.logprobs == ()


@pytest.mark.slow  # compares cached_tokens too: needs the prefix cache the test above warms
def test_token_pairs_equal_text_pairs_and_do_not_depend_on_batching(client, server):
    engine = server.state.engine
    ids = [tuple(map(list, engine.encode_pair(c, x))) for c, x in PAIRS]
    together = client.score(ids)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # one call per pair, 8 at once
        concurrent_ = list(pool.map(lambda p: client.score([p])[0], ids))
    text = client.score(PAIRS)
    for a, c, d in zip(together, concurrent_, text):
        assert a == c == d
    for i in (0, 7, len(ids) - 1):  # alone, with nothing else running
        assert client.score([ids[i]])[0] == together[i]
    assert together.receipt.digest == text.receipt.digest  # same tokens scored: same receipt


def test_truncate_context(tiny_server):
    from seedstream.client import Client

    limit = tiny_server.state.engine.info.max_context  # 512: a cheap model for a full-context pair
    ctx, cont = [100 + i for i in range(limit)], [5, 6]
    with Client(tiny_server.address, timeout=120) as client:
        with pytest.raises(InvalidArgumentError) as err:
            client.score([(ctx, cont)])
        assert err.value.field == "pairs[0].continuation"
        s = client.score([(ctx, cont)], truncate_context=True)[0]
        assert s.truncated_tokens == 2 and s.context_tokens == limit - 2
        assert s.logprobs == client.score([(ctx[2:], cont)])[0].logprobs


def test_invalid_score_requests_name_the_field(client):
    with pytest.raises(InvalidArgumentError, match="pairs"):
        client.score([])
    with pytest.raises(InvalidArgumentError) as err:
        client.score([("a", "b"), ([1], [])])
    assert err.value.field == "pairs[1].continuation"
    with pytest.raises(InvalidArgumentError) as err:
        client.score([([10**6], [1])])
    assert err.value.field == "pairs[0].context"
    with pytest.raises(InvalidArgumentError, match="max_length"):
        client.score_rolling("text", max_length=10**6)


def test_rolling_equals_score_over_lm_eval_windows(client, server):
    lm_eval_utils = pytest.importorskip("lm_eval.utils")
    engine = server.state.engine
    text = "Reproducible evaluation: the same seed gives the same tokens. " * 6 + "Ünïcödé ✓ end."
    ids = engine.tokenize(text)
    max_length = 16
    windows = [
        lm_eval_utils.make_disjoint_window(w)
        for w in lm_eval_utils.get_rolling_token_windows(ids, engine.prefix_token_id, max_length, 1)
    ]
    by_pairs = client.score(windows)
    rolling = client.score_rolling(text, max_length=max_length)
    assert rolling.token_ids == tuple(ids) and rolling.num_tokens == len(ids)
    assert rolling.num_windows == len(windows) > 3 and rolling.max_length == max_length
    assert rolling.logprobs == tuple(lp for s in by_pairs for lp in s.logprobs)
    assert rolling.logprob == pytest.approx(sum(s.logprob for s in by_pairs), abs=1e-9)
    # Default window: the model's context - 1, so a short text is one window scored after BOS.
    whole = client.score_rolling(text)
    assert whole.num_windows == 1 and whole.max_length == engine.info.max_context - 1
    assert whole.logprobs == client.score([([engine.prefix_token_id], ids)])[0].logprobs
    assert client.score_rolling(token_ids=ids, max_length=max_length).logprobs == rolling.logprobs
    empty = client.score_rolling("")
    assert empty.num_tokens == 0 and empty.logprob == 0.0
