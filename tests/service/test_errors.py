"""Status codes a caller can rely on: INVALID_ARGUMENT naming the field, UNAVAILABLE while
loading / draining, deadlines, cancellation freeing the slot, and no request that can take the
server down. (RESOURCE_EXHAUSTED, and the client's retries of it: test_overload_retry.py.)"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from svc_helpers import idle, wait_for

from seedstream.client import (
    AsyncClient,
    CancelledError,
    Client,
    DeadlineExceededError,
    InvalidArgumentError,
    UnavailableError,
)
from seedstream.client.errors import field_of
from seedstream.v1 import textgen_pb2 as pb

LONG = dict(prompt="Write a very long story about a dragon.", max_new_tokens=3000, ignore_eos=True, temperature=1.0)


def _req(**fields) -> pb.GenerateRequest:
    fields.setdefault("prompt", "Hello")
    return pb.GenerateRequest(**fields)


# (request, field the message must start with)
INVALID = {
    "no-input": (pb.GenerateRequest(max_new_tokens=4), "input"),
    "empty-prompt": (_req(prompt=""), "prompt"),
    "empty-token-ids": (pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[])), "prompt"),
    "token-id-out-of-vocab": (pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[1, 49152])), "prompt_token_ids"),
    "prompt-too-long": (pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[42] * 9000)), "prompt"),
    "empty-chat": (pb.GenerateRequest(messages=pb.ChatMessages()), "messages"),
    "chat-role-missing": (
        pb.GenerateRequest(messages=pb.ChatMessages(messages=[pb.ChatMessage(content="hi")])),
        "messages[0].role",
    ),
    "temperature-negative": (_req(temperature=-0.5), "temperature"),
    "temperature-nan": (_req(temperature=float("nan")), "temperature"),
    "top-p-zero": (_req(top_p=0.0), "top_p"),
    "top-p-above-one": (_req(top_p=1.5), "top_p"),
    "min-p-above-one": (_req(min_p=2.0), "min_p"),
    "repetition-penalty-zero": (_req(repetition_penalty=0.0), "repetition_penalty"),
    "logit-bias-token": (_req(logit_bias={49152: 1.0}), "logit_bias"),
    "max-new-tokens-zero": (_req(max_new_tokens=0), "max_new_tokens"),
    "max-new-tokens-huge": (_req(max_new_tokens=1_000_000), "max_new_tokens"),
    "min-above-max": (_req(max_new_tokens=4, min_new_tokens=5), "min_new_tokens"),
    "top-logprobs": (_req(top_logprobs=21), "top_logprobs"),
    "stop-token-out-of-vocab": (_req(stop_token_ids=[10**6]), "stop_token_ids"),
    "stop-empty-string": (_req(stop=[""]), "stop"),
    "request-id-too-long": (_req(request_id="x" * 200), "request_id"),
}


@pytest.mark.parametrize("case", list(INVALID), ids=list(INVALID))
@pytest.mark.parametrize("rpc", ["Generate", "GenerateStream"])
def test_invalid_argument_names_the_field(stub, case, rpc):
    request, field = INVALID[case]
    with pytest.raises(grpc.RpcError) as info:
        if rpc == "Generate":
            stub.Generate(request, timeout=30)
        else:
            list(stub.GenerateStream(request, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    assert details.startswith(field), details
    assert field_of(info.value) == field  # the status's BadRequest detail names it too
    if case == "prompt-too-long":
        assert "at most" in details and "9000" in details, details
    if field not in ("input", "prompt", "messages", "messages[0].role", "stop", "request_id"):
        # Range errors say what is allowed.
        assert any(w in details for w in ("allowed", "range", "at most", "must")), details


def test_client_maps_invalid_argument(client):
    with pytest.raises(InvalidArgumentError) as info:
        client.generate("Hello", top_p=7.0)
    assert info.value.field == "top_p" and info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidArgumentError) as info:
        client.tokenize(messages=[])
    assert info.value.field == "messages"
    # Checked before sending: exactly one input, protobuf ranges.
    with pytest.raises(InvalidArgumentError) as info:
        client.generate("a", messages=[{"role": "user", "content": "b"}])
    assert info.value.field == "input"
    with pytest.raises(InvalidArgumentError) as info:
        client.generate("a", seed=-1)
    assert info.value.field == "seed"


def test_server_survives_garbage(server, client):
    """Undecodable bytes and abandoned calls fail alone; the server keeps serving."""
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary("/seedstream.v1.TextGeneration/Generate")
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff\xff\x0f", timeout=10)
        assert info.value.code() != grpc.StatusCode.OK
        unknown = channel.unary_unary("/seedstream.v1.TextGeneration/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as info:
            unknown(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert client.generate("Still alive?", seed=1, max_new_tokens=3).completion_tokens >= 1


def test_deadline_is_honoured_and_frees_the_slot(client, engine):
    for call in ("unary", "stream"):
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            if call == "unary":
                client.generate(**LONG, timeout=1.0)
            else:
                for _ in client.generate_stream(**LONG, timeout=1.0):
                    pass
        assert time.monotonic() - started < 5.0
        assert wait_for(lambda: idle(engine), timeout=5.0), engine.load()


def test_cancelled_stream_frees_its_slot(small_server, small_engine):
    """One slot: a cancelled stream must free it, or the next request would wait ~minutes."""
    with Client(small_server.address) as client:
        # Explicit cancel().
        stream = client.generate_stream(**LONG, seed=1)
        first = next(stream)
        assert first.token_ids
        stream.cancel()
        with pytest.raises(CancelledError):
            next(stream)
        assert wait_for(lambda: idle(small_engine), timeout=5.0), small_engine.load()
        assert client.generate("Hi", seed=2, max_new_tokens=3, timeout=30).completion_tokens >= 1

        # Breaking out of the loop.
        for i, _chunk in enumerate(client.generate_stream(**LONG, seed=3)):
            if i == 2:
                break
        assert wait_for(lambda: idle(small_engine), timeout=5.0), small_engine.load()
        assert client.generate("Hi", seed=4, max_new_tokens=3, timeout=30).completion_tokens >= 1

    # asyncio: cancelling the task that iterates.
    async def cancel_task():
        async with AsyncClient(small_server.address) as ac:
            got = asyncio.Event()

            async def consume():
                async for _ in ac.generate_stream(**LONG, seed=5):
                    got.set()

            task = asyncio.ensure_future(consume())
            await asyncio.wait_for(got.wait(), 60)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(cancel_task())
    assert wait_for(lambda: idle(small_engine), timeout=5.0), small_engine.load()


def test_unavailable_until_loaded_and_while_draining(loop_thread, engine):
    """A server without its engine yet answers UNAVAILABLE and NOT_SERVING; then SERVING; then drains."""
    from seedstream.client import HealthStatus
    from seedstream.server.app import SeedstreamServer

    srv = SeedstreamServer(None, host="127.0.0.1", port=0)
    loop_thread.run(srv.start())
    try:
        with Client(srv.address, timeout=30) as client:
            assert client.health() is HealthStatus.NOT_SERVING
            assert client.health("seedstream.v1.TextGeneration") is HealthStatus.NOT_SERVING
            for call in (
                lambda: client.generate("Hi", max_new_tokens=2),
                client.model_info,
                lambda: client.tokenize("x"),
            ):
                with pytest.raises(UnavailableError, match="loading"):
                    call()

            loop_thread.run(srv.set_engine(engine))
            assert client.health() is HealthStatus.SERVING
            assert client.generate("Hi", seed=1, max_new_tokens=2).completion_tokens >= 1

            # Drain with a stream in flight: it finishes; new work and health see the shutdown.
            stream = client.generate_stream(
                "Count to twenty:", seed=2, temperature=0.0, max_new_tokens=30, ignore_eos=True
            )
            next(stream)
            shutdown = asyncio.run_coroutine_threadsafe(srv.shutdown(60.0, stop_engine=False), loop_thread.loop)
            assert wait_for(lambda: srv.state.draining, timeout=5.0)
            assert client.health() is HealthStatus.NOT_SERVING
            with pytest.raises(UnavailableError, match="shutting down"):
                client.generate("Hi", max_new_tokens=2)
            rest = list(stream)
            assert rest[-1].finish_reason is not None and rest[-1].completion_tokens == 30
            shutdown.result(60)
    finally:
        loop_thread.run(srv.shutdown(0, stop_engine=False))
