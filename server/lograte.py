"""Rate-limited logging: a repeated warning or error is written once per interval, with a count.

Why: a hostile client can make the same error happen thousands of times a second (1,100 trickling
connections gave 266,556 tracebacks in 47 s, 113 MB of log and 80 % CPU). The first record of a kind
is written; the same kind again within the interval is counted, not written; the first one after the
interval is written with "(N more like this in the last Xs)" and without its traceback when N > 0.
A kind is the logger's name, the level and the message's format string (not its arguments).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

INTERVAL_S = 10.0
# aiohttp's and asyncio's own error lines (accept failures, broken connections), and the front's.
NOISY_LOGGERS = ("asyncio", "aiohttp.server", "aiohttp.web", "aiohttp.access", "seedstream.server.http")


class RateLimitFilter(logging.Filter):
    """Passes the first WARNING-or-worse record of a kind per interval; INFO and below pass always."""

    def __init__(self, interval: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._kinds: dict[tuple[str, int, str], list[float]] = {}  # kind -> [window start, records suppressed in it]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            state = self._kinds.get(kind)
            if state is not None and now - state[0] < self.interval:
                state[1] += 1
                return False
            suppressed = state[1] if state is not None else 0
            self._kinds[kind] = [now, 0]
            if len(self._kinds) > 1024:  # many kinds (messages with the detail in the format): forget old ones
                self._kinds = {k: v for k, v in self._kinds.items() if now - v[0] < self.interval}
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} more like this in the last {self.interval:g}s)"
            record.exc_info = None
            record.exc_text = None
        return True


def install(names: Iterable[str] = NOISY_LOGGERS, interval: float = INTERVAL_S) -> None:
    """Rate-limit the named loggers' own records (once per logger: a second call changes nothing)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitFilter) for f in logger.filters):
            logger.addFilter(RateLimitFilter(interval))
