"""The clients resume a stream on their own when the server is SIGKILLed and restarted mid-stream;
the joined stream and its receipt equal the uninterrupted run's."""

import asyncio
import threading

import pytest

from seedstream.client import AsyncClient, Client, InvalidArgumentError, ResumePolicy

pytestmark = pytest.mark.slow  # kills and restarts a server process mid-stream

ARGS = dict(
    prompt="Write a long story about a lighthouse keeper.",
    seed=20261128,
    temperature=0.9,
    top_p=0.95,
    max_new_tokens=48,
    ignore_eos=True,
)
POLICY = ResumePolicy(max_attempts=8, initial_backoff=0.2, wait_for_server=600)


def _restart_on_same_port(server_process, dead):
    again = server_process()
    again.port, again.target = dead.port, dead.target
    again.start()
    return again


def test_clients_resume_across_a_server_kill_and_restart(server_process):
    srv = server_process()
    srv.start()
    read_async, killed = threading.Event(), threading.Event()
    async_result = {}

    async def async_stream():
        async with AsyncClient(srv.target, resume=POLICY) as client:
            stream = client.generate_stream(**ARGS)
            chunks = [await stream.__anext__() for _ in range(3)]
            read_async.set()
            await asyncio.get_running_loop().run_in_executor(None, killed.wait)
            chunks += [c async for c in stream]
            async_result["chunks"], async_result["resumes"] = chunks, stream.resumes

    worker = threading.Thread(target=lambda: asyncio.run(async_stream()))
    worker.start()
    restarted = None
    try:
        with Client(srv.target, resume=POLICY) as client:
            stream = client.generate_stream(**ARGS)
            chunks = [next(stream) for _ in range(5)]
            assert read_async.wait(timeout=600)
            srv.proc.kill()  # SIGKILL: no goodbye to the clients
            srv.proc.wait()
            restarted = _restart_on_same_port(server_process, srv)
            killed.set()
            chunks += list(stream)
            assert stream.resumes >= 1
            worker.join(timeout=600)
            reference = client.generate(**ARGS)  # the uninterrupted run, on the new server
            with_wrong_prefix = client.generate_stream(**ARGS, resume_token_ids=[reference.token_ids[0] + 1])
            try:
                list(with_wrong_prefix)
                raise AssertionError("a wrong resume_token_ids was accepted")
            except InvalidArgumentError as err:
                assert "resume_token_ids[0]" in str(err)
    finally:
        killed.set()
        for proc in (srv, restarted):
            if proc is not None and proc.proc.poll() is None:
                proc.stop()
    for name, got in (("sync", chunks), ("async", async_result["chunks"])):
        assert tuple(t for c in got for t in c.token_ids) == reference.token_ids, name
        assert "".join(c.text for c in got) == reference.text, name
        assert got[-1].receipt.digest == reference.receipt.digest, name
        assert [c.completion_tokens for c in got] == list(range(1, len(reference.token_ids) + 1)), name
    assert async_result["resumes"] >= 1
