"""The clients send a call the server refused as overloaded (RESOURCE_EXHAUSTED) again, and nothing else.

The server is `small_server`: one batch slot and a one-request queue, so one running stream and one
waiting stream fill it. A call refused while they are there is retried by the client; once the test
has seen the server refuse it (its log line), it frees the queue, and the retry gets the very tokens
of the request's solo run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

import grpc
import pytest
from svc_helpers import idle, wait_for

from seedstream.client import AsyncClient, Client, InvalidArgumentError, OverloadedError

LONG = dict(prompt="Write a very long story about a dragon.", max_new_tokens=3000, ignore_eos=True, temperature=1.0)
REQUEST = dict(prompt="The overloaded server said", seed=77, temperature=0.8, max_new_tokens=6, ignore_eos=True)
# Patient enough that the refusals outlast the test's reaction to the first one, by far.
PATIENT = dict(max_retries=10, retry_base_delay=0.2)


def _lines(caplog, request_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f" id={request_id} " in r.getMessage()]


class FullQueue:
    """One stream running and one waiting on small_server: the next call is refused until release()."""

    def __init__(self, client: Client, engine, seed: int):
        self.running = client.generate_stream(**LONG, seed=seed)
        next(self.running)  # admitted and decoding
        self.waiting = client.generate_stream(**LONG, seed=seed + 1)
        assert wait_for(lambda: engine.load()["waiting"] == 1, timeout=10.0), engine.load()

    def release(self) -> None:
        self.waiting.cancel()
        self.running.cancel()


def _sync_unary(client: Client, rid: str) -> tuple[list[int], int | None]:
    return client.generate(**REQUEST, request_id=rid).token_ids, None


def _sync_stream(client: Client, rid: str) -> tuple[list[int], int | None]:
    with client.generate_stream(**REQUEST, request_id=rid) as stream:
        return [t for chunk in stream for t in chunk.token_ids], stream.retries


def _async_call(target: str, rid: str, stream: bool) -> tuple[list[int], int | None]:
    async def run():
        async with AsyncClient(target, timeout=120, **PATIENT) as ac:
            if not stream:
                return (await ac.generate(**REQUEST, request_id=rid)).token_ids, None
            async with ac.generate_stream(**REQUEST, request_id=rid) as s:
                return [t async for chunk in s for t in chunk.token_ids], s.retries

    return asyncio.run(run())


@pytest.mark.parametrize("kind", ["sync-unary", "sync-stream", "async-unary", "async-stream"])
def test_overloaded_call_is_retried_and_gets_its_solo_tokens(small_server, small_engine, caplog, kind):
    caplog.set_level(logging.INFO, logger="seedstream")
    rid = f"retry-{kind}"
    with Client(small_server.address, timeout=120, **PATIENT) as client:
        solo = client.generate(**REQUEST).token_ids
        queue = FullQueue(client, small_engine, seed=30)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            if kind.startswith("sync"):
                call = _sync_unary if kind == "sync-unary" else _sync_stream
                future = pool.submit(call, client, rid)
            else:
                future = pool.submit(_async_call, small_server.address, rid, kind == "async-stream")
            # The server refused it at least once; only then is there room.
            refused = lambda: any(line.endswith("status=RESOURCE_EXHAUSTED") for line in _lines(caplog, rid))  # noqa: E731
            assert wait_for(refused, timeout=60.0), _lines(caplog, rid)
            queue.release()
            tokens, retries = future.result(timeout=120)
    assert list(tokens) == list(solo)
    if retries is not None:
        assert retries >= 1
    # The server logs a call when its handler returns, which can be just after the client read the last token.
    ok = lambda: _lines(caplog, rid)[-1].endswith("status=OK")  # noqa: E731
    assert wait_for(ok, timeout=5.0), _lines(caplog, rid)
    assert len(_lines(caplog, rid)) >= 2, _lines(caplog, rid)
    assert wait_for(lambda: idle(small_engine), timeout=5.0), small_engine.load()


def test_max_retries_zero_surfaces_resource_exhausted(small_server, small_engine, caplog):
    caplog.set_level(logging.INFO, logger="seedstream")
    with Client(small_server.address, timeout=60, max_retries=0) as client:
        queue = FullQueue(client, small_engine, seed=40)
        try:
            with pytest.raises(OverloadedError) as info:
                client.generate("Third", seed=12, max_new_tokens=2, request_id="no-retry-unary")
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            stream = client.generate_stream("Fourth", seed=13, max_new_tokens=2, request_id="no-retry-stream")
            with pytest.raises(OverloadedError):
                next(stream)
            assert stream.retries == 0
        finally:
            queue.release()
    assert wait_for(lambda: idle(small_engine), timeout=5.0), small_engine.load()
    for rid in ("no-retry-unary", "no-retry-stream"):
        assert [line.rsplit(" ", 1)[-1] for line in _lines(caplog, rid)] == ["status=RESOURCE_EXHAUSTED"]


def test_invalid_argument_is_never_retried(small_server, small_engine, caplog):
    """An out-of-vocabulary token id only the server can check: one call, one refusal, on both clients."""
    caplog.set_level(logging.INFO, logger="seedstream")
    quick = dict(max_retries=5, retry_base_delay=0.0)  # a wrong retry would come at once, and show in the log
    with Client(small_server.address, timeout=60, **quick) as client:
        with pytest.raises(InvalidArgumentError):
            client.generate(prompt_token_ids=[10**8], max_new_tokens=2, request_id="bad-unary")
        with pytest.raises(InvalidArgumentError):
            list(client.generate_stream(prompt_token_ids=[10**8], max_new_tokens=2, request_id="bad-stream"))

    async def bad_async():
        async with AsyncClient(small_server.address, timeout=60, **quick) as ac:
            with pytest.raises(InvalidArgumentError):
                await ac.generate(prompt_token_ids=[10**8], max_new_tokens=2, request_id="bad-async")

    asyncio.run(bad_async())
    with Client(small_server.address, timeout=60) as client:  # a marker: every earlier line is written
        client.generate("Hi", seed=1, max_new_tokens=1, request_id="marker")
    assert wait_for(lambda: _lines(caplog, "marker"), timeout=10.0)
    for rid in ("bad-unary", "bad-stream", "bad-async"):
        assert [line.rsplit(" ", 1)[-1] for line in _lines(caplog, rid)] == ["status=INVALID_ARGUMENT"], rid
