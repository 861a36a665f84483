"""n samples of one request: sample j is the request with sample_index + j, run as its own sequence."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING

from .types import GenerationChunk
from .validation import ValidRequest

if TYPE_CHECKING:
    from .engine import Engine


async def generate_samples(
    engine: Engine, requests: Sequence[ValidRequest]
) -> AsyncGenerator[tuple[int, GenerationChunk], None]:
    """Every sample's chunks as (j, chunk), interleaved as the engine produces them.

    `requests` are the samples Engine.validate() made. Each sample is an ordinary sequence, so its
    tokens are those of the same request sent alone. Closing the iterator (or one sample failing)
    cancels every sample.
    """
    if len(requests) == 1:
        async with contextlib.aclosing(engine.generate(requests[0])) as chunks:
            async for chunk in chunks:
                yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, GenerationChunk | Exception]] = asyncio.Queue()

    async def pump(j: int, req: ValidRequest) -> None:
        try:
            async with contextlib.aclosing(engine.generate(req)) as chunks:
                async for chunk in chunks:
                    queue.put_nowait((j, chunk))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # hand it to the consumer, which cancels the rest
            queue.put_nowait((j, exc))

    tasks = [asyncio.create_task(pump(j, r)) for j, r in enumerate(requests)]
    unfinished = len(requests)
    try:
        while unfinished:
            j, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            yield j, item
            if item.finish_reason is not None:
                unfinished -= 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
