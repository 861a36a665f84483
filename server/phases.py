"""Named, timed phases of a server's start (resolving, hashing, converting, compiling kernels, ...).

A load runs on one background thread while the event loop logs a heartbeat; the heartbeat reads
`current()` to say what is actually taking the time ("still compiling kernels (35s)") instead of a
generic "still loading the model". Phases nest: the innermost one running is the one reported.
Only the stdlib is imported, so the kernels' build and the loader can both use it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger("seedstream.server")

_lock = threading.Lock()
_running: list[tuple[str, float]] = []  # (name, monotonic start), outermost first


@contextlib.contextmanager
def phase(name: str, report: Callable[[str], object] | None = None) -> Iterator[None]:
    """Mark `name` (a gerund phrase: "converting weights") as running; report its duration when it ends.

    `report` takes the finished message (default: log at INFO); a failure is reported too, so the log
    says how long the failing phase ran.
    """
    entry = (name, time.monotonic())
    with _lock:
        _running.append(entry)
    outcome = "failed after"
    try:
        yield
        outcome = "done in"
    finally:
        with _lock:
            _running.remove(entry)
        (report or log.info)(f"{name}: {outcome} {time.monotonic() - entry[1]:.1f}s")


def current() -> tuple[str, float] | None:
    """The innermost phase running now and its elapsed seconds, or None when none is."""
    with _lock:
        if not _running:
            return None
        name, started = _running[-1]
    return name, time.monotonic() - started
