"""Client-side pieces that need no server: request building, error mapping, receipts."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

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
from seedstream.client.errors import STATUS_DETAILS_KEY, from_rpc_error
from seedstream.client.types import EffectiveSampling
from seedstream.v1 import textgen_pb2 as pb
from seedstream.v1.protocol import OPTIONAL_GENERATE_FIELDS


def test_unset_keywords_stay_unset():
    req = generate_request("hi")
    assert req.WhichOneof("input") == "prompt"
    for name in OPTIONAL_GENERATE_FIELDS:
        assert not req.HasField(name), name


def test_keywords_map_onto_fields():
    req = generate_request(
        messages=[{"role": "system", "content": "Be brief."}, ("user", "Hi")],
        seed=2**64 - 1,
        temperature=0.0,
        top_k=5,
        top_p=0.5,
        min_p=0.1,
        repetition_penalty=1.1,
        presence_penalty=0.2,
        frequency_penalty=-0.2,
        logit_bias={3: -1.5},
        max_new_tokens=7,
        min_new_tokens=1,
        stop="END",
        stop_token_ids=[2],
        ignore_eos=True,
        top_logprobs=4,
        sample_index=2,
        request_id="r1",
    )
    assert [(m.role, m.content) for m in req.messages.messages] == [("system", "Be brief."), ("user", "Hi")]
    assert req.HasField("temperature") and req.temperature == 0.0
    assert req.seed == 2**64 - 1 and req.top_k == 5 and dict(req.logit_bias) == {3: -1.5}
    assert list(req.stop) == ["END"] and list(req.stop_token_ids) == [2]
    assert req.ignore_eos and req.top_logprobs == 4 and req.sample_index == 2 and req.request_id == "r1"
    assert generate_request(prompt_token_ids=[]).WhichOneof("input") == "prompt_token_ids"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(), "input"),
        (dict(prompt="a", prompt_token_ids=[1]), "input"),
        (dict(prompt="a", seed=-1), "seed"),
        (dict(prompt="a", seed=2**64), "seed"),
        (dict(prompt="a", top_k=-3), "top_k"),
        (dict(prompt="a", temperature="hot"), "temperature"),
        (dict(prompt_token_ids=[-1]), "prompt_token_ids"),
        (dict(messages=[{"content": "no role"}]), "messages[0]"),
    ],
)
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
    """A failed call as grpc hands it over; `field` rides in a google.rpc.BadRequest detail, as a server sends it."""

    def __init__(self, code, details, field=None, trailers=None):
        self._code, self._details = code, details
        self._trailers = trailers if trailers is not None else _field_trailers(code, details, field)

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


def _field_trailers(code, details, field):
    if field is None:
        return ()
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=details)]
        )
    )
    status = status_pb2.Status(code=code.value[0], message=details, details=[detail])
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


@pytest.mark.parametrize(
    "code, cls",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, OverloadedError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.CANCELLED, CancelledError),
        (grpc.StatusCode.INTERNAL, SeedstreamError),
    ],
)
def test_status_codes_map_to_exceptions(code, cls):
    err = from_rpc_error(_Status(code, "top_p: 3.0 out of range: allowed (0, 1]", "top_p"))
    assert type(err) is cls and isinstance(err, SeedstreamError) and err.code == code
    if cls is InvalidArgumentError:
        assert err.field == "top_p"
    if cls is DeadlineExceededError:
        assert isinstance(err, TimeoutError)


def test_field_comes_from_the_detail_never_from_the_text():
    message = "top_p: 3.0 out of range: allowed (0, 1]"
    code = grpc.StatusCode.INVALID_ARGUMENT
    assert from_rpc_error(_Status(code, message, "messages[2].role")).field == "messages[2].role"
    assert from_rpc_error(_Status(code, message)).field is None  # no detail: no guessing from the text
    assert from_rpc_error(_Status(code, message, trailers=((STATUS_DETAILS_KEY, b"\xff\xff"),))).field is None
    other = any_pb2.Any()
    other.Pack(error_details_pb2.RetryInfo())
    unrelated = status_pb2.Status(code=code.value[0], message=message, details=[other]).SerializeToString()
    assert (
        from_rpc_error(_Status(code, message, trailers=(("x-other", b"1"), (STATUS_DETAILS_KEY, unrelated)))).field
        is None
    )
    err = from_rpc_error(_Status(code, message, "top_p"))
    assert str(err) == message and err.details == message  # the text is the server's, unchanged


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
