"""The official `openai` package against the HTTP front of a real server on the default model:
unary and streamed, seeds, identity with gRPC, errors, overload, a restart, and disconnects."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")

from http_helpers import base_url, idle, post, start, wait_for  # noqa: E402

PROMPT = "Once upon a time"
CHAT = [{"role": "user", "content": "Write one sentence about the sea."}]
SAMPLING = dict(temperature=0.8, top_p=0.9, max_tokens=8)


def extra(obj, name):
    return (obj.model_extra or {})[name]


def test_completion_unary_and_stream_are_the_same(oai, server):
    unary = oai.completions.create(model="seedstream", prompt=PROMPT, seed=11, **SAMPLING)
    choice = unary.choices[0]
    assert choice.text and choice.finish_reason in ("length", "stop")
    assert extra(unary, "seed") == 11
    info = server.state.engine.info
    assert unary.system_fingerprint.startswith("ss-" + info.model_identity[:16])
    assert unary.usage.completion_tokens == len(extra(choice, "token_ids"))
    chunks = list(oai.completions.create(model="seedstream", prompt=PROMPT, seed=11, stream=True, **SAMPLING))
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    assert sum((extra(c.choices[0], "token_ids") for c in chunks), []) == extra(choice, "token_ids")
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason
    assert extra(chunks[-1].choices[0], "receipt") == extra(choice, "receipt")
    assert {c.system_fingerprint for c in chunks} == {unary.system_fingerprint}


def test_chat_unary_and_stream_are_the_same(oai):
    unary = oai.chat.completions.create(model="seedstream", messages=CHAT, seed=5, **SAMPLING)
    message = unary.choices[0].message
    assert message.role == "assistant" and message.content
    stream = oai.chat.completions.create(
        model="seedstream", messages=CHAT, seed=5, stream=True, stream_options={"include_usage": True}, **SAMPLING
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == unary.usage.completion_tokens
    assert extra(unary.choices[0], "receipt")["digest"] == extra(chunks[-2].choices[0], "receipt")["digest"]


def test_unseeded_request_gets_a_seed_that_replays(oai):
    raw = oai.completions.with_raw_response.create(model="seedstream", prompt=PROMPT, **SAMPLING)
    first = raw.parse()
    seed = extra(first, "seed")
    assert raw.headers["seedstream-seed"] == str(seed) and 0 <= seed < 2**64
    assert extra(first, "receipt")["seed"] == str(seed)
    again = oai.completions.create(model="seedstream", prompt=PROMPT, seed=seed, **SAMPLING)
    assert extra(again.choices[0], "token_ids") == extra(first.choices[0], "token_ids")


def test_same_seed_alone_and_under_16_concurrent(oai):
    def run(seed: int, chat: bool) -> list[int]:
        if chat:
            r = oai.chat.completions.create(model="seedstream", messages=CHAT, seed=seed, **SAMPLING)
        else:
            r = oai.completions.create(model="seedstream", prompt=PROMPT, seed=seed, **SAMPLING)
        return extra(r.choices[0], "token_ids")

    alone = {(7, False): run(7, False), (7, True): run(7, True)}
    jobs = [(7 if i % 2 == 0 else 100 + i, i % 4 == 0) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda job: run(*job), jobs))
    for job, tokens in zip(jobs, results):
        if job in alone:
            assert tokens == alone[job], f"seed 7 (chat={job[1]}) changed under load"
    assert len({tuple(t) for t in results}) > 2  # the other seeds really differ


def test_text_and_receipt_equal_the_grpc_result(oai, server):
    from seedstream.client import Client

    vllm_extras = {"top_k": 40, "min_p": 0.02, "repetition_penalty": 1.1}
    http = oai.completions.create(
        model="seedstream",
        prompt=PROMPT,
        seed=3,
        presence_penalty=0.5,
        frequency_penalty=0.2,
        logit_bias={"13": -5},
        stop=["\n\n"],
        extra_body=vllm_extras,
        **SAMPLING,
    )
    chat = oai.chat.completions.create(model="seedstream", messages=CHAT, seed=3, **SAMPLING)
    with Client(server.address, timeout=300) as client:
        grpc = client.generate(
            PROMPT,
            seed=3,
            temperature=0.8,
            top_p=0.9,
            max_new_tokens=8,
            top_k=40,
            min_p=0.02,
            repetition_penalty=1.1,
            presence_penalty=0.5,
            frequency_penalty=0.2,
            logit_bias={13: -5},
            stop=["\n\n"],
        )
        grpc_chat = client.generate(messages=CHAT, seed=3, temperature=0.8, top_p=0.9, max_new_tokens=8)
    assert http.choices[0].text == grpc.text
    assert extra(http.choices[0], "token_ids") == list(grpc.token_ids)
    assert extra(http.choices[0], "receipt")["digest"] == grpc.receipt.digest
    assert chat.choices[0].message.content == grpc_chat.text
    assert extra(chat.choices[0], "receipt")["digest"] == grpc_chat.receipt.digest


def test_n_samples_and_prompt_lists(oai):
    both = oai.completions.create(model="seedstream", prompt=[PROMPT, "The sea"], n=2, seed=9, **SAMPLING)
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    single = oai.completions.create(model="seedstream", prompt="The sea", n=2, seed=9, **SAMPLING)
    assert [c.text for c in both.choices[2:]] == [c.text for c in single.choices]
    replay = oai.completions.create(
        model="seedstream", prompt="The sea", seed=9, extra_body={"sample_index": 1}, **SAMPLING
    )
    assert replay.choices[0].text == single.choices[1].text  # sample j is the stream keyed by (seed, j)


def test_echo_logprobs_equal_the_score_rpc(oai, server):
    from seedstream.client import Client

    ids = server.state.engine.tokenize("The capital of France is Paris", True)
    out = oai.completions.create(model="seedstream", prompt=ids, echo=True, logprobs=1, max_tokens=1, temperature=0)
    lp = out.choices[0].logprobs
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids) + 1
    assert out.choices[0].text.startswith("The capital of France is Paris")
    with Client(server.address, timeout=300) as client:
        (scored,) = client.score([(ids[:1], ids[1:])])
    assert lp.token_logprobs[1:-1] == list(scored.logprobs)
    greedy = [lp.token_logprobs[i] == max(lp.top_logprobs[i].values()) for i in range(1, len(ids))]
    assert all(greedy) == scored.is_greedy


@pytest.mark.parametrize(
    "body, param",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"logprobs": 50}, "logprobs"),
        ({"n": 0}, "n"),
        ({"seed": -1}, "seed"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"13": 500}}, "logit_bias"),
        ({"min_tokens": 50, "max_tokens": 5}, "min_tokens"),
        ({"stop": 7}, "stop"),
        ({"suffix": "end"}, "suffix"),
        ({"top_k": "many"}, "top_k"),
        ({"no_such_option": 1}, "no_such_option"),
        ({"prompt": []}, "prompt"),
    ],
)
def test_bad_completion_parameters_get_400_naming_them(url, body, param):
    status, reply = post(url + "/v1/completions", {"model": "seedstream", "prompt": PROMPT, **body})
    assert status == 400, reply
    assert reply["error"]["param"] == param and reply["error"]["type"] == "invalid_request_error"
    assert reply["error"]["message"].startswith(param)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"max_completion_tokens": 10**6}, "max_completion_tokens"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
    ],
)
def test_bad_chat_parameters_get_400_naming_them(url, body, param):
    status, reply = post(url + "/v1/chat/completions", {"model": "seedstream", "messages": CHAT, **body})
    assert status == 400, reply
    assert reply["error"]["param"] == param


def test_openai_client_raises_bad_request_and_not_found(oai):
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="seedstream", messages=CHAT, temperature=101)
    assert err.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="gpt-4", prompt=PROMPT)


def test_models_and_health(oai, url, server):
    (card,) = oai.models.list().data
    info = server.state.engine.info
    assert card.id == info.model_id and extra(card, "model_sha256") == info.model_sha256
    with urllib.request.urlopen(url + "/health") as resp:
        assert json.loads(resp.read()) == {"status": "serving"}


def test_loading_server_answers_503(http_loop):
    from seedstream.server.app import SeedstreamServer

    srv = SeedstreamServer(None, host="127.0.0.1", port=0, http_port=0)  # no engine yet: "loading"
    http_loop.run(srv.start())
    try:
        status, reply = post(base_url(srv) + "/v1/completions", {"prompt": PROMPT})
        assert status == 503 and reply["error"]["type"] == "service_unavailable"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base_url(srv) + "/health")
        assert err.value.code == 503
    finally:
        http_loop.run(srv.shutdown(1.0))


def test_sse_disconnect_frees_the_slot(oai, server):
    stream = oai.completions.create(
        model="seedstream", prompt=PROMPT, seed=1, max_tokens=2000, stream=True, extra_body={"ignore_eos": True}
    )
    next(iter(stream))
    assert server.state.engine.load()["running"] == 1
    stream.close()
    assert wait_for(lambda: idle(server)), server.state.engine.load()


@pytest.fixture(scope="module")
def second(http_loop):
    """A second engine, loaded afresh (a restart), with one slot and a one-request queue."""
    from seedstream.server.engine import EngineConfig, load_engine

    engine = load_engine(EngineConfig(max_batch_size=1, max_queue=1), progress=lambda msg: None)
    srv = start(http_loop, engine)
    yield srv
    http_loop.run(srv.shutdown(5.0))


def test_fingerprint_and_tokens_stable_across_a_restart(oai, second):
    first = oai.completions.create(model="seedstream", prompt=PROMPT, seed=21, **SAMPLING)
    with openai.OpenAI(base_url=base_url(second) + "/v1", api_key="unused", max_retries=0) as other:
        again = other.completions.create(model="seedstream", prompt=PROMPT, seed=21, **SAMPLING)
    assert again.system_fingerprint == first.system_fingerprint
    assert extra(again.choices[0], "token_ids") == extra(first.choices[0], "token_ids")
    assert extra(again, "receipt")["digest"] == extra(first, "receipt")["digest"]


def test_overload_gets_429(second):
    with openai.OpenAI(base_url=base_url(second) + "/v1", api_key="unused", max_retries=0) as other:
        running = other.completions.create(
            model="seedstream", prompt=PROMPT, max_tokens=2000, stream=True, extra_body={"ignore_eos": True}
        )
        next(iter(running))  # holds the only slot
        status_waiting = {}

        def queue_one():
            status_waiting["reply"] = post(base_url(second) + "/v1/completions", {"prompt": PROMPT, "max_tokens": 1})

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(queue_one)
            assert wait_for(lambda: second.state.engine.load()["waiting"] == 1)
            status, reply = post(base_url(second) + "/v1/completions", {"prompt": PROMPT, "max_tokens": 1})
            assert status == 429 and reply["error"]["type"] == "rate_limit_error"
            running.close()
            pending.result(300)
        assert status_waiting["reply"][0] == 200
    assert wait_for(lambda: idle(second))
