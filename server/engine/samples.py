"""n samples of one request: sample j is the request with sample_index + j, run as its own sequence."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import AsyncIterator

from .types import GenerationChunk, GenerationRequest, InvalidRequest

MAX_SAMPLES = 64
SAMPLE_INDEX_LIMIT = 2**32  # sample_index + n must not pass it (the proto field is uint32)


def sample_requests(request: GenerationRequest, n: int) -> list[GenerationRequest]:
    """The n requests, one per sample; only the first echoes the prompt's logprobs (they are shared)."""
    if not 1 <= n <= MAX_SAMPLES:
        raise InvalidRequest("n", f"{n} out of range: allowed [1, {MAX_SAMPLES}]")
    if request.sample_index + n > SAMPLE_INDEX_LIMIT:
        raise InvalidRequest("n", f"sample_index + n = {request.sample_index + n}; allowed at most 2^32")
    return [
        dataclasses.replace(request, sample_index=request.sample_index + j,
                            prompt_logprobs=request.prompt_logprobs and j == 0)
        for j in range(n)
    ]


async def generate_samples(engine, requests: list[GenerationRequest]) -> AsyncIterator[tuple[int, GenerationChunk]]:
    """Every sample's chunks as (j, chunk), interleaved as the engine produces them.

    Each sample is an ordinary sequence, so its tokens are those of the same request sent alone.
    Closing the iterator (or one sample failing) cancels every sample. The requests differ only in
    sample_index, which sample_requests() bounds, so validating the first is validating them all.
    """
    engine.validate(requests[0])
    if len(requests) == 1:
        async with contextlib.aclosing(engine.generate(requests[0])) as chunks:
            async for chunk in chunks:
                yield 0, chunk
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(j: int, req: GenerationRequest) -> None:
        try:
            async with contextlib.aclosing(engine.generate(req)) as chunks:
                async for chunk in chunks:
                    queue.put_nowait((j, chunk, None))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # hand it to the consumer, which cancels the rest
            queue.put_nowait((j, None, exc))

    tasks = [asyncio.create_task(pump(j, r)) for j, r in enumerate(requests)]
    unfinished = len(requests)
    try:
        while unfinished:
            j, chunk, exc = await queue.get()
            if exc is not None:
                raise exc
            yield j, chunk
            if chunk.finish_reason is not None:
                unfinished -= 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
