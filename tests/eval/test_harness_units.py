"""Pieces of the lm-eval backend that need no server: windows, seeds, generation kwargs."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("lm_eval")

from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from seedstream.client.harness import derive_seed, normalize_gen_kwargs, request_key  # noqa: E402
from seedstream.server.engine.rolling import rolling_windows  # noqa: E402


def test_rolling_windows_are_lm_evals():
    rng = random.Random(0)
    for _ in range(2000):
        n, max_length = rng.randint(0, 80), rng.randint(1, 24)
        tokens = [rng.randint(3, 500) for _ in range(n)]
        expected = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 1, max_length, 1)]
        got = rolling_windows(tokens, 1, max_length)
        assert [(list(c), list(x)) for c, x in expected] == got
        assert [t for _, x in got for t in x] == tokens  # every token predicted exactly once
        assert all(len(c) + len(x) <= max_length + 1 for c, x in got)


def test_derived_seed_depends_on_content_only():
    kwargs = {"until": ["\n"], "temperature": 0.8, "do_sample": True}
    a = derive_seed(1234, "Question: 1?", kwargs)
    assert a == derive_seed(1234, "Question: 1?", dict(reversed(list(kwargs.items()))))  # key order irrelevant
    assert a != derive_seed(1235, "Question: 1?", kwargs)
    assert a != derive_seed(1234, "Question: 2?", kwargs)
    assert a != derive_seed(1234, "Question: 1?", {**kwargs, "temperature": 0.7})
    assert 0 <= a < 2**64
    assert request_key("x", {"a": 1}) == request_key("x", {"a": 1}) != request_key("x", {"a": 2})


@pytest.mark.parametrize(
    "given, temperature",
    [
        ({}, 0.0),
        ({"temperature": 0.0}, 0.0),
        ({"temperature": 0.7}, 0.7),
        ({"do_sample": False, "temperature": 0.7}, 0.0),
        ({"do_sample": True}, 1.0),
        ({"do_sample": True, "temperature": 0.5}, 0.5),
    ],
)
def test_gen_kwargs_sampling_rules(given, temperature):
    assert normalize_gen_kwargs(given, 256)["temperature"] == temperature


def test_gen_kwargs_limits_stops_and_passthrough():
    kw = normalize_gen_kwargs({"until": "\n\n", "max_new_tokens": 9, "top_k": "40", "seed": "7", "foo": 1}, 256)
    assert kw["until"] == ["\n\n"] and kw["max_gen_toks"] == 9 and kw["top_k"] == 40 and kw["seed"] == 7
    assert kw["_other"] == {"foo": 1}
    kw = normalize_gen_kwargs({"until": ["", "x"], "max_gen_toks": 3, "max_tokens": 99}, 256)
    assert kw["until"] == ["x"] and kw["max_gen_toks"] == 3
    assert normalize_gen_kwargs({}, 17)["max_gen_toks"] == 17


# --- the backend against a fake client: retries, order, seeds -----------------------------------

import threading  # noqa: E402
import time  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from lm_eval.api.instance import Instance  # noqa: E402

from seedstream.client.errors import InvalidArgumentError, OverloadedError, UnavailableError  # noqa: E402
from seedstream.client.harness import SeedstreamLM  # noqa: E402


class FakeClient:
    """Answers like a server would, after a delay that makes later requests finish first."""

    target = "fake:0"

    def __init__(self, failures=()):
        self.failures = list(failures)  # exceptions raised by the first calls, in order
        self.calls = []
        self.lock = threading.Lock()

    def _maybe_fail(self):
        with self.lock:
            if self.failures:
                raise self.failures.pop(0)

    def model_info(self):
        self._maybe_fail()
        return SimpleNamespace(
            max_context=64,
            model_id="fake",
            model_sha256="0" * 64,
            device="cpu",
            dtype="float32",
            to_dict=lambda: {"model_id": "fake"},
        )

    def generate(self, prompt=None, **kw):
        self._maybe_fail()
        with self.lock:
            self.calls.append((prompt, kw))
        if prompt is None:
            return SimpleNamespace(text="from ids", receipt=None)
        time.sleep(0.05 if prompt.endswith("0") else 0.001)
        if len(prompt) > 100:
            raise InvalidArgumentError("prompt: too long", field="prompt")
        return SimpleNamespace(text=f"{prompt}|{kw['seed']}|{kw['sample_index']}\nrest", receipt=None)

    def tokenize(self, text):
        return SimpleNamespace(token_ids=tuple(range(len(text))))

    def score(self, pairs, truncate_context=False):
        self._maybe_fail()
        time.sleep(0.02 if pairs[0][0].endswith("0") else 0.001)
        return _Scores(SimpleNamespace(logprob=-float(len(c) + len(x)), is_greedy=False) for c, x in pairs)


class _Scores(list):
    receipt = None


def _lm(fake, **kw):
    return SeedstreamLM(client=fake, backoff=0.001, max_backoff=0.002, **kw)


def _gen(context, **kwargs):
    return Instance(
        "generate_until", {}, (context, {"until": ["\n"], "do_sample": True, "temperature": 0.7, **kwargs}), 0
    )


def test_results_come_back_in_request_order_at_any_concurrency():
    contexts = [f"prompt {i}" for i in range(12)]
    outs = [_lm(FakeClient(), concurrency=c).generate_until([_gen(x) for x in contexts]) for c in (1, 8)]
    assert outs[0] == outs[1]
    assert [o.split("|")[0] for o in outs[0]] == contexts
    assert all("\n" not in o for o in outs[0])
    pairs = [Instance("loglikelihood", {}, (f"ctx {i % 3}", " x" * i), 0) for i in range(10)]
    for c in (1, 4):
        got = _lm(FakeClient(), concurrency=c, score_batch=3).loglikelihood(pairs)
        assert got == [(-float(len(a.args[0]) + len(a.args[1])), False) for a in pairs]


def test_seeds_come_from_content_and_repeats_are_samples():
    lm = _lm(FakeClient(), seed=99)
    out = lm.generate_until([_gen("a"), _gen("b"), _gen("a"), _gen("a", seed=5), _gen("a", seed=5)])
    seeds = [int(o.split("|")[1]) for o in out]
    indices = [int(o.split("|")[2]) for o in out]
    expected = derive_seed(99, "a", _gen("a").args[1])
    assert seeds[0] == seeds[2] == expected and seeds[1] != expected
    assert seeds[3:] == [5, 5]
    assert indices == [0, 0, 1, 0, 1]
    # Reversed order: the same seed and sample index per request.
    rev = _lm(FakeClient(), seed=99).generate_until([_gen("a", seed=5), _gen("b"), _gen("a")])
    assert rev[1] == out[1] and rev[2] == out[0]


def test_retries_on_unavailable_and_overloaded_then_gives_up():
    fake = FakeClient([UnavailableError("loading"), OverloadedError("queue full"), OverloadedError("queue full")])
    lm = _lm(fake)
    assert lm.generate_until([_gen("x")])[0].startswith("x|")
    fake = FakeClient([OverloadedError("queue full")] * 5)
    lm = SeedstreamLM(client=FakeClient(), backoff=0.001, max_retries=2)
    lm.client = fake
    with pytest.raises(OverloadedError):
        lm.generate_until([_gen("x")])
    fake = FakeClient([InvalidArgumentError("temperature: bad", field="temperature")])
    lm = SeedstreamLM(client=FakeClient(), backoff=0.001)
    lm.client = fake
    with pytest.raises(InvalidArgumentError):  # not retried
        lm.generate_until([_gen("x")])


def test_over_long_prompts_keep_their_last_tokens():
    fake = FakeClient()
    lm = _lm(fake)
    lm.generate_until([_gen("y" * 200, max_gen_toks=10)])
    prompt, kw = fake.calls[-1]
    assert prompt is None and kw["prompt_token_ids"] == list(range(200))[-(64 - 10) :]


def test_stop_limits_come_from_the_server():
    class Limited(FakeClient):
        def model_info(self):
            info = super().model_info()
            info.max_stop_strings, info.max_stop_string_chars = 2, 3
            return info

    until = ["a", "rest", "bb", "c", "d"]
    fake = Limited()
    [out] = _lm(fake).generate_until([_gen("x", until=until)])
    assert fake.calls[-1][1]["stop"] == ["a", "bb"]  # at most 3 characters each, at most 2 of them
    assert out.startswith("x|") and out.endswith("|0\n")  # "rest" still applies, after the fact
    fake = FakeClient()  # a server that reports no limits: the protocol's
    _lm(fake).generate_until([_gen("x", until=[str(i) for i in range(20)] + ["z" * 300])])
    assert fake.calls[-1][1]["stop"] == [str(i) for i in range(16)]


def test_unknown_model_args_are_rejected():
    with pytest.raises(ValueError, match="unknown model_args"):
        SeedstreamLM(client=FakeClient(), bogus=1)
