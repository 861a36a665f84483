"""Fair admission: waiting requests are admitted round-robin over clients, a client may hold only
max_queue_per_client waiting entries, a cancelled waiting request leaves the queue at once, and none
of it changes a token."""

import asyncio

import pytest

from seedstream.sampler import SamplingParams
from seedstream.server.engine import GenerationRequest, Overloaded

run = asyncio.run


def _request(engine, i: int, client: str, max_new_tokens: int = 6) -> GenerationRequest:
    prompt = tuple(engine.render_chat([{"role": "user", "content": f"Say something about {i}."}]))
    return GenerationRequest(
        prompt,
        SamplingParams(temperature=0.9, seed=100 + i),
        max_new_tokens=max_new_tokens,
        ignore_eos=True,
        client=client,
    )


async def _tokens(engine, request) -> list[int]:
    out = []
    async for chunk in engine.generate(engine.validate(request)[0]):
        out += chunk.token_ids
    return out


async def _until(predicate, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


@pytest.mark.slow
def test_round_robin_over_clients_changes_no_token(engine_factory):
    engine = engine_factory(max_batch_size=1, max_queue=8, max_queue_per_client=3)
    names = ["a1", "a2", "a3", "b1"]

    async def scenario():
        await engine.start()
        try:
            reqs = {name: _request(engine, i, name[0]) for i, name in enumerate(names)}
            solo = {name: await _tokens(engine, r) for name, r in reqs.items()}

            blocker = engine.generate(engine.validate(_request(engine, 99, "a", max_new_tokens=4000))[0])
            await blocker.__anext__()  # running: everything else waits
            order: list[str] = []

            async def job(name):
                tokens = await _tokens(engine, reqs[name])
                order.append(name)
                return tokens

            tasks = {}
            for name in names[:3]:
                tasks[name] = asyncio.ensure_future(job(name))
                await _until(lambda n=len(tasks): engine.load()["waiting"] == n)  # noqa: B008 (binds the count now)
            with pytest.raises(Overloaded, match="max_queue_per_client=3"):
                await _tokens(engine, _request(engine, 50, "a"))
            tasks["b1"] = asyncio.ensure_future(job("b1"))
            await _until(lambda: engine.load()["waiting"] == 4)

            # A cancelled waiting request stops counting at once, not at the next admission pass.
            doomed = asyncio.ensure_future(_tokens(engine, _request(engine, 51, "c")))
            await _until(lambda: engine.load()["waiting"] == 5)
            doomed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await doomed
            assert engine.load()["waiting"] == 4

            await blocker.aclose()
            together = {name: await task for name, task in tasks.items()}
            return solo, together, order
        finally:
            await engine.stop()

    solo, together, order = run(scenario())
    assert order == ["a1", "b1", "a2", "a3"]  # first come first served would be a1, a2, a3, b1
    assert together == solo
