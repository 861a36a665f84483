"""Client and AsyncClient take the same generation options, those GenerateOptions declares and documents,
and every one of them reaches the request (no server: a recording stub stands in for it)."""

from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path

import pytest

from seedstream.client import AsyncClient, Client, GenerateOptions
from seedstream.client._requests import generate_request
from seedstream.client.options import GENERATE_OPTION_NAMES
from seedstream.v1 import textgen_pb2 as pb

GENERATE_METHODS = ("generate", "generate_stream", "generate_batch")

# One valid, non-default value for every option but the two other inputs (they exclude `prompt`).
SAMPLE = dict(
    seed=7,
    temperature=0.5,
    top_k=3,
    top_p=0.9,
    min_p=0.1,
    repetition_penalty=1.1,
    presence_penalty=0.2,
    frequency_penalty=0.3,
    logit_bias={5: 1.0},
    max_new_tokens=9,
    min_new_tokens=1,
    stop=["x"],
    stop_token_ids=[2],
    ignore_eos=True,
    top_logprobs=2,
    sample_index=1,
    n=2,
    echo_prompt_logprobs=True,
    logprobs_mode="processed",
    request_id="r",
    resume_token_ids=[4],
)
INPUTS = {"messages": [("user", "hi")], "prompt_token_ids": [1, 2]}


def test_options_are_the_request_fields():
    """Every GenerateRequest field is an option, but `prompt`, the methods' first argument."""
    assert set(pb.GenerateRequest.DESCRIPTOR.fields_by_name) - {"prompt"} == GENERATE_OPTION_NAMES
    assert set(SAMPLE) | set(INPUTS) == GENERATE_OPTION_NAMES
    assert GenerateOptions.__optional_keys__ == GENERATE_OPTION_NAMES  # total=False: every option may be left out


def test_every_option_is_documented():
    """Each option has a docstring of its own in GenerateOptions, giving its default unless it is an input."""
    source = Path(inspect.getfile(GenerateOptions)).read_text()
    body = next(
        n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == "GenerateOptions"
    ).body
    docs = {}
    for field, doc in zip(body, body[1:]):
        if isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
            docs[field.target.id] = doc.value.value
    assert set(docs) == GENERATE_OPTION_NAMES
    for name, doc in docs.items():
        assert name in INPUTS or "Default" in doc, name


def test_generate_request_takes_exactly_the_options():
    for name, value in SAMPLE.items():
        req = generate_request("hi", **{name: value})
        assert req != generate_request("hi"), f"{name} did not reach the request"
    for name, value in INPUTS.items():
        assert generate_request(**{name: value}).WhichOneof("input") == name
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
        generate_request("hi", temprature=0.5)


@pytest.mark.parametrize("method", GENERATE_METHODS)
def test_both_clients_have_the_same_signature(method):
    sync, aio = inspect.signature(getattr(Client, method)), inspect.signature(getattr(AsyncClient, method))
    assert sync.parameters == aio.parameters
    options = list(sync.parameters.values())[-1]
    assert options.kind is inspect.Parameter.VAR_KEYWORD and options.annotation == "Unpack[GenerateOptions]"


class _Recorder:
    """A TextGenerationStub stand-in that keeps each request and answers with an empty response."""

    def __init__(self, awaitable: bool):
        self.requests: list[tuple[str, pb.GenerateRequest]] = []
        self.awaitable = awaitable

    def Generate(self, request, **_):
        self.requests.append(("Generate", request))
        if not self.awaitable:
            return pb.GenerateResponse()

        async def answer():
            return pb.GenerateResponse()

        return answer()

    def GenerateStream(self, request, **_):
        self.requests.append(("GenerateStream", request))
        return _Call()


class _Call:
    def cancel(self):
        pass


def _sync_requests(**options):
    with Client("127.0.0.1:1") as client:
        client._stub = recorder = _Recorder(awaitable=False)
        client.generate("hi", **options)
        client.generate_stream("hi", **options).cancel()
        client.generate_batch(["hi", {"prompt": "hi"}], **options)
    return recorder.requests


def _async_requests(**options):
    async def run():
        async with AsyncClient("127.0.0.1:1") as client:
            client._ensure()
            client._stub = recorder = _Recorder(awaitable=True)
            await client.generate("hi", **options)
            client.generate_stream("hi", **options).cancel()
            await client.generate_batch(["hi", {"prompt": "hi"}], **options)
        return recorder.requests

    return asyncio.run(run())


def test_both_clients_send_the_same_requests():
    sync, aio = _sync_requests(**SAMPLE), _async_requests(**SAMPLE)
    assert [name for name, _ in sync] == ["Generate", "GenerateStream", "Generate", "Generate"]
    assert sync == aio
    assert all(request == generate_request("hi", **SAMPLE) for _, request in sync)


def test_both_clients_reject_an_unknown_option():
    for requests in (_sync_requests, _async_requests):
        with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
            requests(temprature=0.5)
