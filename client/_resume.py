"""Resuming a broken generate_stream: what both clients share (policy, state, the next request).

A stream is resumable because the server's randomness is keyed by (seed, sample index, step) and
its prefill equals its decode bit for bit: sent back with the tokens already received
(`resume_token_ids`) and the seed the stream reported, the request continues exactly where it
broke. The caller's iterator sees one continuous stream.
"""

from __future__ import annotations

import dataclasses
import time

import grpc

from seedstream.v1 import textgen_pb2 as pb

# Failures worth a resume: the server or the connection went away (a restart, a dropped link).
RESUMABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclasses.dataclass(frozen=True)
class ResumePolicy:
    """How a client resumes a broken stream: at most `max_attempts` new calls per stream, waiting
    `initial_backoff` seconds before the first, times `multiplier` before each next one, at most
    `max_backoff`. Before each new call the client waits up to `wait_for_server` seconds for the
    server's health to be SERVING again (a restarting server loads its model first)."""

    max_attempts: int = 6
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    multiplier: float = 2.0
    wait_for_server: float = 180.0

    def __post_init__(self) -> None:
        if self.max_attempts < 0:
            raise ValueError(f"max_attempts={self.max_attempts}: must be >= 0")
        if not 0 <= self.initial_backoff <= self.max_backoff:
            raise ValueError("backoffs: need 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError(f"multiplier={self.multiplier}: must be >= 1")


class StreamResume:
    """One stream's progress: the tokens received and the seed, and whether to try again."""

    def __init__(self, request: pb.GenerateRequest, policy: ResumePolicy | None, timeout: float | None):
        self.request = request
        self.policy = policy
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.tokens: list[int] = list(request.resume_token_ids)
        self.seed: int | None = request.seed if request.HasField("seed") else None
        self.attempts = 0
        self.finished = False

    def seen(self, message: pb.GenerateStreamResponse) -> None:
        self.seed = message.seed
        self.tokens.extend(message.token_ids)
        if message.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
            self.finished = True

    def should_retry(self, error: grpc.RpcError) -> bool:
        """A resumable failure, attempts left, time left, and a single-sample stream."""
        code = error.code() if hasattr(error, "code") else None
        if self.policy is None or self.finished or code not in RESUMABLE_CODES:
            return False
        single_sample = (self.request.n if self.request.HasField("n") else 1) == 1
        left = self.remaining()
        return self.attempts < self.policy.max_attempts and single_sample and (left is None or left > 0)

    def backoff(self) -> float:
        """Seconds to wait before the next attempt (counts the attempt)."""
        p = self.policy
        assert p is not None, "backoff() follows should_retry(), which needs a policy"
        wait = min(p.max_backoff, p.initial_backoff * p.multiplier**self.attempts)
        self.attempts += 1
        left = self.remaining()
        return wait if left is None else max(0.0, min(wait, left))

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def next_request(self) -> pb.GenerateRequest:
        """The original request with the seed the stream used and the tokens received so far. With
        nothing received and no seed known, the original request again (the caller saw nothing)."""
        req = pb.GenerateRequest()
        req.CopyFrom(self.request)
        if self.seed is not None:
            req.seed = self.seed
        del req.resume_token_ids[:]
        req.resume_token_ids.extend(self.tokens)
        return req

    def server_wait(self) -> float:
        """Seconds to wait for the server to serve again: the policy's, within the caller's deadline."""
        assert self.policy is not None, "server_wait() follows should_retry(), which needs a policy"
        left = self.remaining()
        return self.policy.wait_for_server if left is None else max(0.1, min(left, self.policy.wait_for_server))
