"""Retrying calls the server refused because its queue was full (RESOURCE_EXHAUSTED), for both clients.

The server answers RESOURCE_EXHAUSTED "server overloaded, retry later" when its admission queue (or one
client's share of it) is full, before it has done any work for the call. Sending the same request a
little later is safe: a seeded request gives the same tokens whenever it runs. As OpenAI's client does
for HTTP 429, the client waits and tries again a bounded number of times: exponential backoff with full
jitter (a uniform wait in [0, base * 2^retry], capped), so clients refused together do not all come
back together. The same holds for a proxy's 502/503/504 answer (nginx, when the replica behind it
died or is unreachable): gRPC reports it as UNAVAILABLE "Received http2 header with status: 502" and,
because the proxy answered with headers, its own retry policy treats the call as committed and never
sends it again (OpenAI's client retries those statuses too). Every other code, and gRPC's own
RESOURCE_EXHAUSTED for a message over the size limit (which no wait can fix), is raised at once.

A stream is retried only while it has yielded nothing; once a token has reached the caller, only
the resume logic (_resume.py, for UNAVAILABLE) may send it again.
"""

from __future__ import annotations

import dataclasses
import random
import re
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a call fails: the CLI reads this module's defaults before it needs grpc
    import grpc

DEFAULT_MAX_RETRIES = 2
DEFAULT_RETRY_BASE_DELAY = 0.5  # seconds: the first retry waits up to this, each next one up to twice as long
MAX_RETRY_DELAY = 8.0  # seconds: no single wait is longer
# gRPC's own RESOURCE_EXHAUSTED for a message over the size limit ("Received message larger than max
# (...)", "Sent message larger than max (...)"): the same request would fail the same way.
_SIZE_LIMIT_DETAIL = "message larger than max"
# gRPC's UNAVAILABLE for an HTTP/2 response whose :status is a proxy's "the upstream failed" (bad gateway,
# service unavailable, gateway timeout): nothing reached a replica's engine, or the replica died.
_PROXY_FAILURE = re.compile(r"header with status: 50[234]\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class OverloadRetry:
    """How many times, and how patiently, a call refused with RESOURCE_EXHAUSTED is sent again."""

    max_retries: int = DEFAULT_MAX_RETRIES
    base_delay: float = DEFAULT_RETRY_BASE_DELAY
    max_delay: float = MAX_RETRY_DELAY

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries={self.max_retries}: must be >= 0 (0 = no retries)")
        if not 0 <= self.base_delay <= self.max_delay:
            raise ValueError(f"retry_base_delay={self.base_delay}: allowed [0, {self.max_delay}]")

    def attempts(self, timeout: float | None) -> OverloadAttempts:
        """The retry state of one call with this deadline (seconds from now; None: none)."""
        return OverloadAttempts(self, timeout)


def is_overload(error: grpc.RpcError) -> bool:
    """RESOURCE_EXHAUSTED from the server's admission, not gRPC's message size limit."""
    import grpc

    code = error.code() if callable(getattr(error, "code", None)) else None
    if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return False
    details = error.details() if callable(getattr(error, "details", None)) else None
    return _SIZE_LIMIT_DETAIL not in (details or "")


def is_proxy_failure(error: grpc.RpcError) -> bool:
    """UNAVAILABLE synthesised from a proxy's 502/503/504 answer (see the module docstring)."""
    import grpc

    code = error.code() if callable(getattr(error, "code", None)) else None
    details = error.details() if callable(getattr(error, "details", None)) else None
    return code == grpc.StatusCode.UNAVAILABLE and bool(_PROXY_FAILURE.search(details or ""))


class OverloadAttempts:
    """One call's retries: how many are left and the call's deadline, which every attempt shares."""

    def __init__(self, policy: OverloadRetry, timeout: float | None):
        self.policy = policy
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.retries = 0

    def wait(self, error: grpc.RpcError) -> float | None:
        """Seconds to wait before sending the call again (counts the retry), or None: raise `error`.
        None also when the wait would outlast the call's deadline: the caller learns of the overload
        rather than of a deadline the retry would have used up."""
        if self.retries >= self.policy.max_retries or not (is_overload(error) or is_proxy_failure(error)):
            return None
        wait = random.uniform(0.0, min(self.policy.max_delay, self.policy.base_delay * 2**self.retries))
        left = self.remaining()
        if left is not None and wait >= left:
            return None
        self.retries += 1
        return wait

    def remaining(self) -> float | None:
        """Seconds left of the call's deadline (the timeout of the next attempt); None: no deadline."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
