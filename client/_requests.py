"""Building request protobufs from keyword arguments (shared by Client and AsyncClient)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from seedstream.v1 import textgen_pb2 as pb
from seedstream.v1.protocol import DEFAULT_PORT, MAX_MESSAGE_BYTES, OPTIONAL_GENERATE_FIELDS, package_version

from ._common import Metadata
from .errors import InvalidArgumentError
from .options import GENERATE_OPTION_NAMES, GenerateOptions, Message

if TYPE_CHECKING:
    from .options import Unpack


def default_target() -> str:
    """SEEDSTREAM_TARGET, else localhost:SEEDSTREAM_PORT (50051)."""
    target = os.environ.get("SEEDSTREAM_TARGET")
    if target:
        return target
    return f"localhost:{os.environ.get('SEEDSTREAM_PORT') or DEFAULT_PORT}"


def chat_messages(messages: Iterable[Message]) -> pb.ChatMessages:
    """Messages as dicts {"role", "content"}, (role, content) pairs, or ChatMessage protos."""
    out = pb.ChatMessages()
    for i, m in enumerate(messages):
        if isinstance(m, pb.ChatMessage):
            out.messages.append(m)
        elif isinstance(m, Mapping):
            try:
                out.messages.add(role=m["role"], content=m.get("content", ""))
            except (KeyError, TypeError) as exc:
                raise _invalid(f"messages[{i}]", f"needs a 'role' and a 'content' string ({exc})") from None
        else:
            try:
                role, content = m
                out.messages.add(role=role, content=content)
            except (TypeError, ValueError) as exc:
                raise _invalid(f"messages[{i}]", f"expected a dict or a (role, content) pair ({exc})") from None
    return out


def _invalid(field: str, what: str) -> InvalidArgumentError:
    """A local check's error (no status code): the message is "<field>: <what>", as a server's is."""
    return InvalidArgumentError(f"{field}: {what}", None, field)


def _set(msg: Any, name: str, value: Any) -> None:
    try:
        setattr(msg, name, value)
    except (TypeError, ValueError) as exc:
        raise _invalid(name, f"{value!r} is not allowed here ({exc})") from None


def _extend(field: Any, name: str, values: Any) -> None:
    try:
        field.extend(values)
    except (TypeError, ValueError) as exc:
        raise _invalid(name, f"{values!r} is not allowed here ({exc})") from None


def _pick_input(prompt: Any, messages: Any, prompt_token_ids: Any) -> None:
    given = [
        n
        for n, v in (("prompt", prompt), ("messages", messages), ("prompt_token_ids", prompt_token_ids))
        if v is not None
    ]
    if len(given) != 1:
        raise _invalid(
            "input",
            "give exactly one of prompt, messages or prompt_token_ids"
            + (f" (got {', '.join(given)})" if given else ""),
        )


def generate_request(prompt: str | None = None, **options: Unpack[GenerateOptions]) -> pb.GenerateRequest:
    """A GenerateRequest from a prompt and GenerateOptions; every option left out (or None) takes the
    server's default."""
    unknown = sorted(set(options) - GENERATE_OPTION_NAMES)
    if unknown:
        raise TypeError(f"generate_request() got an unexpected keyword argument {unknown[0]!r}")
    values: Mapping[str, Any] = options
    messages, prompt_token_ids = values.get("messages"), values.get("prompt_token_ids")
    _pick_input(prompt, messages, prompt_token_ids)
    req = pb.GenerateRequest()
    if prompt is not None:
        _set(req, "prompt", prompt)
    elif messages is not None:
        req.messages.CopyFrom(chat_messages(messages))
    else:
        _extend(req.prompt_token_ids.ids, "prompt_token_ids", list(cast(Sequence[int], prompt_token_ids)))
        req.prompt_token_ids.SetInParent()  # an empty list still selects this input (the server rejects it clearly)
    for name in OPTIONAL_GENERATE_FIELDS:  # GenerateOptions of the same names; None: the server's default
        if values.get(name) is not None:
            _set(req, name, values[name])
    logit_bias = values.get("logit_bias")
    if logit_bias:
        for token_id, bias in dict(logit_bias).items():
            try:
                req.logit_bias[int(token_id)] = float(bias)
            except (TypeError, ValueError) as exc:
                raise _invalid("logit_bias", f"{token_id!r}: {bias!r} is not allowed here ({exc})") from None
    stop = values.get("stop")
    if stop is not None:
        _extend(req.stop, "stop", [stop] if isinstance(stop, str) else list(stop))
    if values.get("stop_token_ids") is not None:
        _extend(req.stop_token_ids, "stop_token_ids", list(values["stop_token_ids"]))
    _set(req, "ignore_eos", bool(values.get("ignore_eos", False)))
    _set(req, "top_logprobs", values.get("top_logprobs", 0))
    _set(req, "sample_index", values.get("sample_index", 0))
    _set(req, "echo_prompt_logprobs", bool(values.get("echo_prompt_logprobs", False)))
    _set(req, "logprobs_mode", values.get("logprobs_mode", ""))
    _set(req, "request_id", values.get("request_id", ""))
    if values.get("resume_token_ids"):
        _extend(req.resume_token_ids, "resume_token_ids", list(values["resume_token_ids"]))
    return req


def batch_item(prompt: Any) -> dict[str, Any]:
    """generate() arguments of one generate_batch() entry: a text, or a dict of per-prompt arguments."""
    return dict(prompt) if isinstance(prompt, Mapping) else {"prompt": prompt}


Pair = tuple[str | Sequence[int], str | Sequence[int]]


def score_request(pairs: Iterable[Pair], *, truncate_context: bool = False, request_id: str = "") -> pb.ScoreRequest:
    """A ScoreRequest: each pair is (context, continuation) as two strings or two token-id lists."""
    req = pb.ScoreRequest(truncate_context=bool(truncate_context))
    _set(req, "request_id", request_id)
    for i, pair in enumerate(pairs):
        try:
            context, continuation = pair
        except (TypeError, ValueError):
            raise _invalid(f"pairs[{i}]", f"expected a (context, continuation) pair, got {pair!r}") from None
        item = req.pairs.add()
        if isinstance(context, str) and isinstance(continuation, str):
            item.text.context, item.text.continuation = context, continuation
        elif not isinstance(context, str) and not isinstance(continuation, str):
            _extend(item.tokens.context, f"pairs[{i}].context", list(context))
            _extend(item.tokens.continuation, f"pairs[{i}].continuation", list(continuation))
            item.tokens.SetInParent()
        else:
            raise _invalid(f"pairs[{i}]", "give both sides as text or both as token ids")
    return req


def score_rolling_request(
    text: str | None = None,
    *,
    token_ids: Sequence[int] | None = None,
    max_length: int | None = None,
    request_id: str = "",
) -> pb.ScoreRollingRequest:
    if (text is None) == (token_ids is None):
        raise _invalid("input", "give exactly one of text or token_ids")
    req = pb.ScoreRollingRequest()
    if text is not None:
        _set(req, "text", text)
    else:
        _extend(req.token_ids.ids, "token_ids", list(cast(Sequence[int], token_ids)))
        req.token_ids.SetInParent()
    if max_length is not None:
        _set(req, "max_length", max_length)
    _set(req, "request_id", request_id)
    return req


def tokenize_request(
    text: str | None = None, *, messages: Iterable[Message] | None = None, add_special_tokens: bool | None = None
) -> pb.TokenizeRequest:
    if (text is None) == (messages is None):
        raise _invalid("input", "give exactly one of text or messages")
    req = pb.TokenizeRequest()
    if text is not None:
        _set(req, "text", text)
    else:
        req.messages.CopyFrom(chat_messages(cast(Iterable[Message], messages)))
    if add_special_tokens is not None:
        req.add_special_tokens = bool(add_special_tokens)
    return req


def channel_options(extra: Sequence[tuple[str, Any]] | None = None) -> list[tuple[str, Any]]:
    version = package_version("")
    ua = f"seedstream-client/{version}" if version else "seedstream-client"
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.primary_user_agent", ua),
    ]
    return options + list(extra or ())


def metadata_pairs(*sources: Metadata) -> tuple[tuple[str, str], ...] | None:
    """Merge metadata given as dicts or (key, value) sequences; keys lower-cased as gRPC requires."""
    pairs: list[tuple[str, str]] = []
    for src in sources:
        if not src:
            continue
        items = src.items() if isinstance(src, Mapping) else src
        pairs.extend((str(k).lower(), v) for k, v in items)
    return tuple(pairs) or None
