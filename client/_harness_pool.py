"""How the lm-eval backend runs its calls: retried with backoff, `concurrency` in flight, results in order."""

from __future__ import annotations

import concurrent.futures
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from .errors import OverloadedError, UnavailableError

log = logging.getLogger("seedstream.harness")

T = TypeVar("T")


def retrying(call: Callable[[], T], max_retries: int, backoff: float, max_backoff: float) -> T:
    """`call()`, retried on UNAVAILABLE and RESOURCE_EXHAUSTED with exponential backoff and jitter."""
    delay = backoff
    for attempt in range(max_retries + 1):
        try:
            return call()
        except (UnavailableError, OverloadedError) as exc:
            if attempt >= max_retries:
                raise
            wait = min(max_backoff, delay) * (0.5 + random.random() / 2)
            log.warning(
                "seedstream: %s (%s); retry %d/%d in %.1fs",
                type(exc).__name__,
                exc,
                attempt + 1,
                max_retries,
                wait,
            )
            time.sleep(wait)
            delay *= 2
    raise AssertionError("unreachable")


def map_in_order(fn: Callable[[Any], T], items: Sequence[Any], concurrency: int, desc: str) -> list[T]:
    """fn over items with `concurrency` calls in flight; results in the items' order."""
    if not items:
        return []
    progress = _progress(len(items), desc)
    results: list[Any] = [None] * len(items)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(concurrency, len(items))) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        try:
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
                progress.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            progress.close()
    return results


class _Progress(Protocol):
    """What map_in_order uses of a tqdm progress bar."""

    def update(self, n: int) -> object: ...

    def close(self) -> None: ...


def _progress(total: int, desc: str) -> _Progress:
    try:
        from tqdm import tqdm

        bar: _Progress = tqdm(total=total, desc=desc, disable=total < 2)
        return bar
    except ImportError:  # pragma: no cover - tqdm comes with lm-eval

        class _Null:
            def update(self, n: int) -> None:
                pass

            def close(self) -> None:
                pass

        return _Null()
