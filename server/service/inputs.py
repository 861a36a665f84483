"""What a request brings in, checked the same way by both fronts: seed, request id, chat, size limits.

Size caps default to multiples of the model's context, so they scale with the model: a prompt can
never use more than `max_context` tokens, and no token of the default tokenizers spans anywhere near
32 characters of ordinary text.
"""

from __future__ import annotations

import dataclasses
import secrets
import uuid
from typing import TYPE_CHECKING

# the defaults of --max-input-chars and --max-input-tokens: these x max_context
from seedstream.server.settings import CHARS_PER_CONTEXT_TOKEN, TOKENS_PER_CONTEXT
from seedstream.server.settings import ServeOptions as _Flags  # the defaults of the `seedstream serve` flags

from .errors import ParamError

if TYPE_CHECKING:
    from seedstream.server.engine import Engine

MAX_CHAT_MESSAGES = 4096
MAX_REQUEST_ID_CHARS = 128


def draw_seed() -> int:
    """A fresh seed in [0, 2^64) for a request that gave none."""
    return secrets.randbits(64)


def request_id(given: str = "", header: str = "") -> str:
    """The request's id: the one it gave, else its x-request-id header (cut to the limit), else a fresh
    one; checked, since it goes into the log."""
    return check_request_id(given or header[:MAX_REQUEST_ID_CHARS] or uuid.uuid4().hex[:16])


def check_request_id(value: str) -> str:
    """The id goes into the log: printable characters only (no newline can forge a log line)."""
    if len(value) > MAX_REQUEST_ID_CHARS:
        raise ParamError("request_id", f"{len(value)} characters; allowed at most {MAX_REQUEST_ID_CHARS}")
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        raise ParamError(
            "request_id", f"contains the control character U+{ord(bad):04X}: allowed printable characters only"
        )
    return value


def render_chat(engine: Engine, messages: list[dict[str, str]]) -> list[int]:
    """The chat's prompt token ids through the model's chat template; its complaints are the caller's."""
    try:
        return engine.render_chat(messages)
    except ParamError:
        raise
    except Exception as exc:  # template errors (unknown role, bad ordering) are the caller's to fix
        raise ParamError("messages", f"the model's chat template rejected the messages: {exc}") from None


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
