"""Client-side pieces that need no server: request building, error mapping, receipts."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from seedstream.client import (
    CancelledError,
    DeadlineExceededError,
    FinishReason,
    GenerateChunk,
    InvalidArgumentError,
    OverloadedError,
    Receipt,
    SeedstreamError,
    UnavailableError,
    join_chunks,
)
from seedstream.client._requests import generate_request, tokenize_request
from seedstream.client.errors import from_rpc_error
from seedstream.client.types import EffectiveSampling
from seedstream.v1 import textgen_pb2 as pb


def test_unset_keywords_stay_unset():
    req = generate_request("hi")
    assert req.WhichOneof("input") == "prompt"
    for name in ("seed", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty", "max_new_tokens", "min_new_tokens"):
        assert not req.HasField(name), name


def test_keywords_map_onto_fields():
    req = generate_request(
        messages=[{"role": "system", "content": "Be brief."}, ("user", "Hi")],
        seed=2**64 - 1, temperature=0.0, top_k=5, top_p=0.5, min_p=0.1, repetition_penalty=1.1,
        presence_penalty=0.2, frequency_penalty=-0.2, logit_bias={3: -1.5}, max_new_tokens=7, min_new_tokens=1,
        stop="END", stop_token_ids=[2], ignore_eos=True, top_logprobs=4, sample_index=2, request_id="r1",
    )
    assert [(m.role, m.content) for m in req.messages.messages] == [("system", "Be brief."), ("user", "Hi")]
    assert req.HasField("temperature") and req.temperature == 0.0
    assert req.seed == 2**64 - 1 and req.top_k == 5 and dict(req.logit_bias) == {3: -1.5}
    assert list(req.stop) == ["END"] and list(req.stop_token_ids) == [2]
    assert req.ignore_eos and req.top_logprobs == 4 and req.sample_index == 2 and req.request_id == "r1"
    assert generate_request(prompt_token_ids=[]).WhichOneof("input") == "prompt_token_ids"


@pytest.mark.parametrize("kwargs, field", [
    (dict(), "input"),
    (dict(prompt="a", prompt_token_ids=[1]), "input"),
    (dict(prompt="a", seed=-1), "seed"),
    (dict(prompt="a", seed=2**64), "seed"),
    (dict(prompt="a", top_k=-3), "top_k"),
    (dict(prompt="a", temperature="hot"), "temperature"),
    (dict(prompt_token_ids=[-1]), "prompt_token_ids"),
    (dict(messages=[{"content": "no role"}]), "messages[0]"),
])
def test_local_checks_raise_invalid_argument(kwargs, field):
    with pytest.raises(InvalidArgumentError) as info:
        generate_request(**kwargs)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)  # also a ValueError, as Python code expects


def test_tokenize_request():
    assert tokenize_request("x").text == "x" and not tokenize_request("x").HasField("add_special_tokens")
    assert tokenize_request("x", add_special_tokens=False).HasField("add_special_tokens")
    with pytest.raises(InvalidArgumentError):
        tokenize_request()


class _Status(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


@pytest.mark.parametrize("code, cls", [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, OverloadedError),
    (grpc.StatusCode.UNAVAILABLE, UnavailableError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
    (grpc.StatusCode.CANCELLED, CancelledError),
    (grpc.StatusCode.INTERNAL, SeedstreamError),
])
def test_status_codes_map_to_exceptions(code, cls):
    err = from_rpc_error(_Status(code, "top_p: 3.0 out of range: allowed (0, 1]"))
    assert type(err) is cls and isinstance(err, SeedstreamError) and err.code == code
    if cls is InvalidArgumentError:
        assert err.field == "top_p"
    if cls is DeadlineExceededError:
        assert isinstance(err, TimeoutError)


def _receipt(**changes) -> Receipt:
    sampling = EffectiveSampling(1.0, 0, 1.0, 0.0, 1.0, 0.0, 0.0, (), 16, 0, (), (), False)
    base = Receipt("m", "a" * 64, "float32", "cpu", "1", "1", 5, 0, sampling, "b" * 64, "c" * 64)
    if "temperature" in changes:
        base = dataclasses.replace(base, sampling=dataclasses.replace(sampling, temperature=changes.pop("temperature")))
    return dataclasses.replace(base, **changes)


def test_receipt_comparison():
    a = _receipt()
    assert a.reproduces(_receipt(model_id="renamed.gguf"))  # a name is not content
    assert a.differences(_receipt(dtype="bfloat16")) == ["dtype"]
    assert a.differences(_receipt(model_sha256="d" * 64, seed=6)) == ["model_sha256", "seed"]
    assert a.differences(_receipt(temperature=0.5)) == ["sampling.temperature"]


def test_join_chunks():
    def chunk(text, ids, finish=None):
        return GenerateChunk(text, tuple(ids), tuple(-0.1 for _ in ids), (), 9, finish, 3, 0, "r", 0, None)

    joined = join_chunks([chunk("Hel", [1]), chunk("", [2]), chunk("lo", [3], FinishReason.EOS)])
    assert joined.text == "Hello" and joined.token_ids == (1, 2, 3) and joined.finish_reason is FinishReason.EOS
    with pytest.raises(ValueError):
        join_chunks([chunk("a", [1])])


def test_finish_reasons_cover_the_enum():
    values = [v.number for v in pb.FinishReason.DESCRIPTOR.values if v.number]
    assert {FinishReason.from_pb(v) for v in values} == set(FinishReason)
