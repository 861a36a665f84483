"""Chat rendering in which message content is always text.

Rendering a chat template gives one string; tokenizing it whole would turn a
user's literal "<|im_end|><|im_start|>system" into real control tokens and let
them forge a turn. Here only the template's own special tokens are control
tokens: the text between them is tokenized with special-token matching off.

Content without any special-token string takes the plain path (the rendered
text tokenized whole), so ordinary chats keep exactly the token ids they always
had. A caller who wants control tokens on purpose sends prompt_token_ids.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any, NoReturn, Protocol

from .types import ParamError


class Tokenizer(Protocol):
    """What the engine calls on a transformers tokenizer (AutoTokenizer's result)."""

    def __call__(
        self, text: str, *, add_special_tokens: bool = ..., split_special_tokens: bool = ...
    ) -> Mapping[str, Any]: ...  # a BatchEncoding: {"input_ids": [...], ...}

    def decode(self, token_ids: list[int], *, skip_special_tokens: bool, clean_up_tokenization_spaces: bool) -> str: ...

    def get_added_vocab(self) -> dict[str, int]: ...

    def apply_chat_template(
        self, conversation: list[dict[str, str]], *, add_generation_prompt: bool, tokenize: bool
    ) -> Any: ...  # tokenize=False: the rendered str


def render_chat_ids(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the chat, rendered with add_generation_prompt=True; content never yields a control token."""
    text = _render(tokenizer, messages)
    specials: dict[str, int] = tokenizer.get_added_vocab()  # {text: id}: every string matched before BPE
    pattern = _pattern(tuple(sorted(specials, key=len, reverse=True)))
    for i, m in enumerate(messages):
        in_role = pattern.search(m["role"]) if pattern is not None else None
        if in_role is not None:
            raise ParamError(f"messages[{i}].role", f"contains the special-token string {in_role.group(0)!r}")
    if pattern is None or not any(pattern.search(m["content"]) for m in messages):
        return _encode(tokenizer, text, split_special=False)
    spans = _content_spans(tokenizer, messages, text, pattern)
    ids: list[int] = []
    start = 0
    for match in pattern.finditer(text):
        if any(a < match.end() and match.start() < b for a, b in spans):
            continue  # inside a message's content: text, not a control token
        ids += _encode(tokenizer, text[start : match.start()], split_special=True)
        ids.append(specials[match.group(0)])
        start = match.end()
    ids += _encode(tokenizer, text[start:], split_special=True)
    control = set(specials.values())
    if sum(t in control for t in ids) != len(pattern.findall(text)) - sum(
        len(pattern.findall(m["content"])) for m in messages
    ):
        return _refuse(messages, pattern)  # this tokenizer ignored split_special_tokens: fail closed
    return ids


def _render(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> str:
    text: str = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text


def _encode(tokenizer: Tokenizer, text: str, split_special: bool) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=split_special)["input_ids"])


_PATTERNS: dict[tuple[str, ...], re.Pattern[str] | None] = {}


def _pattern(specials: tuple[str, ...]) -> re.Pattern[str] | None:
    if specials not in _PATTERNS:
        _PATTERNS[specials] = re.compile("|".join(map(re.escape, specials))) if specials else None
    return _PATTERNS[specials]


def _content_spans(
    tokenizer: Tokenizer, messages: list[dict[str, str]], text: str, pattern: re.Pattern[str]
) -> list[tuple[int, int]]:
    """[start, end) of each message's content inside `text`.

    Renders the chat again with a unique marker in place of each content and
    checks that putting the contents back gives `text` exactly; a template that
    rewrites content (trims it, say) cannot be split safely, so content with a
    special-token string is then refused rather than risk a forged turn.
    """
    nonce = secrets.token_hex(8)
    markers = [f"\ue000{nonce}:{i}\ue001" for i in range(len(messages))]
    marked = _render(tokenizer, [{**m, "content": mk} for m, mk in zip(messages, markers)])
    spans: list[tuple[int, int]] = []
    pieces: list[str] = []
    pos = out_len = 0
    for marker, message in zip(markers, messages):
        at = marked.find(marker, pos)
        if at < 0:
            return _refuse(messages, pattern)
        pieces.append(marked[pos:at])
        out_len += at - pos
        spans.append((out_len, out_len + len(message["content"])))
        pieces.append(message["content"])
        out_len += len(message["content"])
        pos = at + len(marker)
    pieces.append(marked[pos:])
    if "".join(pieces) != text:
        return _refuse(messages, pattern)
    return spans


def _refuse(messages: list[dict[str, str]], pattern: re.Pattern[str]) -> NoReturn:
    i, found = next((i, f) for i, m in enumerate(messages) if (f := pattern.search(m["content"])) is not None)
    raise ParamError(
        f"messages[{i}].content",
        f"contains the special-token string {found.group(0)!r}, which this model's chat template does not let "
        "us keep as text; remove it, or send prompt_token_ids to pass control tokens on purpose",
    )
