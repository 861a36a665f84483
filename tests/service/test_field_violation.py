"""A ParamError's field travels typed: ParamError -> the status's BadRequest FieldViolation -> the client's
InvalidArgumentError.field, with the message unchanged, and no model loaded."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from seedstream.client.errors import STATUS_DETAILS_KEY, InvalidArgumentError, from_rpc_error
from seedstream.sampler import SamplingParamError, SamplingParams
from seedstream.server.engine.types import NotReady, ParamError
from seedstream.server.rpc.errors import abort_with, status_for


class _Context:
    """Records what the handler aborted with, as grpc.aio's context would send it."""

    async def abort(self, code, details="", trailing_metadata=()):
        self.code, self.details, self.trailers = code, details, tuple(trailing_metadata)
        raise grpc.aio.AbortError()


class _Failed(grpc.RpcError):
    """What the client's stub raises for that status."""

    def __init__(self, context: _Context):
        self.context = context

    def code(self):
        return self.context.code

    def details(self):
        return self.context.details

    def trailing_metadata(self):
        return self.context.trailers


def _abort(exc: Exception) -> _Context:
    context = _Context()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(abort_with(context, exc, "Generate", "req-1"))
    return context


@pytest.mark.parametrize(
    "field, message, text",
    [
        ("top_p", "3.0 out of range: allowed (0, 1]", "top_p: 3.0 out of range: allowed (0, 1]"),
        (
            "messages[0].role",
            "must be a non-empty role such as 'user'",
            "messages[0].role: must be a non-empty role such as 'user'",
        ),
        (
            "pairs[3].continuation",
            "pairs[3].continuation: 9 tokens",
            "pairs[3].continuation: 9 tokens",
        ),  # already named
    ],
)
def test_param_error_reaches_the_client_as_a_typed_field(field, message, text):
    context = _abort(ParamError(field, message))
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT and context.details == text
    [(key, value)] = context.trailers
    assert key == STATUS_DETAILS_KEY
    status = status_pb2.Status.FromString(value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and status.message == text
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [(field, text)]
    err = from_rpc_error(_Failed(context))
    assert isinstance(err, InvalidArgumentError) and err.field == field and str(err) == text


def test_other_errors_carry_no_field_detail():
    context = _abort(NotReady("the model is still loading"))
    assert context.code == grpc.StatusCode.UNAVAILABLE and context.trailers == ()
    assert status_for(ParamError("n", "0 out of range")) == (grpc.StatusCode.INVALID_ARGUMENT, "n: 0 out of range")


def test_sampler_errors_name_their_field_typed():
    cases = {
        "temperature": SamplingParams(temperature=-1.0),
        "top_k": SamplingParams(top_k=-1),
        "seed": SamplingParams(seed=2**64),
        "logit_bias": SamplingParams(logit_bias={3: 100.5}),
    }
    for field, params in cases.items():
        with pytest.raises(SamplingParamError) as info:
            params.validate(vocab_size=10)
        assert info.value.field == field and str(info.value).startswith(field)
        assert isinstance(info.value, ValueError)
