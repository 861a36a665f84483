"""Connection and request limits: gRPC server options, size caps checked before any work, the maximum deadline.

Size caps default to multiples of the model's context, so they scale with the
model: a prompt can never use more than `max_context` tokens, and no token of
the default tokenizers spans anywhere near 32 characters of ordinary text.
"""

from __future__ import annotations

import dataclasses

from seedstream.server.engine.types import ParamError

# the defaults of --max-input-chars and --max-input-tokens: these x max_context
from seedstream.server.settings import CHARS_PER_CONTEXT_TOKEN, CONNECTION_AGE_GRACE_S, TOKENS_PER_CONTEXT
from seedstream.server.settings import ServeOptions as _Flags  # the defaults of the `seedstream serve` flags

MAX_CHAT_MESSAGES = 4096


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """HTTP/2 connection settings (seconds; 0 or None = grpc's default, i.e. off)."""

    keepalive_time: float = _Flags.keepalive_time  # server pings an idle connection this often
    keepalive_timeout: float = _Flags.keepalive_timeout  # and closes it if the ping is not answered within this
    min_client_ping_interval: float = 10.0  # clients pinging more often than this get GOAWAY
    max_connection_idle: float = _Flags.max_connection_idle  # close connections without calls for this long
    max_connection_age: float | None = _Flags.max_connection_age  # close (gracefully) connections older than this
    max_connection_age_grace: float = CONNECTION_AGE_GRACE_S  # time calls get to finish after max_connection_age
    max_streams_per_connection: int = _Flags.max_streams_per_connection  # concurrent calls on one connection

    def grpc_options(self) -> list[tuple[str, int]]:
        ms = lambda seconds: int(seconds * 1000)  # noqa: E731
        options = [
            ("grpc.keepalive_time_ms", ms(self.keepalive_time)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", ms(self.min_client_ping_interval)),
            ("grpc.max_concurrent_streams", int(self.max_streams_per_connection)),
        ]
        if self.max_connection_idle:
            options.append(("grpc.max_connection_idle_ms", ms(self.max_connection_idle)))
        if self.max_connection_age:
            options.append(("grpc.max_connection_age_ms", ms(self.max_connection_age)))
            options.append(("grpc.max_connection_age_grace_ms", ms(self.max_connection_age_grace)))
        return [(k, v) for k, v in options if v > 0]


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """Caps on one request's size and duration (None: derived from the model's context)."""

    max_input_chars: int | None = _Flags.max_input_chars  # text characters in one request, checked before tokenizing
    max_input_tokens: int | None = _Flags.max_input_tokens  # tokens in one Score, ScoreRolling or Tokenize request
    max_deadline: float | None = _Flags.max_deadline  # seconds any call may take; None or 0 = no server limit

    def chars(self, context: int) -> int:
        return self.max_input_chars or CHARS_PER_CONTEXT_TOKEN * context

    def tokens(self, context: int) -> int:
        return self.max_input_tokens or TOKENS_PER_CONTEXT * context


def check_count(field: str, count: int, limit: int, what: str = "entries") -> None:
    if count > limit:
        raise ParamError(field, f"{count} {what}; allowed at most {limit}")


def check_chars(field: str, count: int, limit: int) -> None:
    if count > limit:
        raise ParamError(field, f"{count} characters; allowed at most {limit} (--max-input-chars)")


def check_tokens(field: str, count: int, limit: int) -> None:
    if count > limit:
        raise ParamError(field, f"{count} tokens; allowed at most {limit} (--max-input-tokens)")


def chat_chars(messages) -> int:
    """Characters of a ChatMessages proto (roles and contents), after checking the message count."""
    check_count("messages", len(messages.messages), MAX_CHAT_MESSAGES, "messages")
    return sum(len(m.role) + len(m.content) for m in messages.messages)
