"""OpenAI request JSON -> a checked request description (no engine calls; the front tokenizes)."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from seedstream.sampler import MAX_TOP_N
from seedstream.server.service.errors import ParamError
from seedstream.server.service.inputs import MAX_CHAT_MESSAGES, check_count
from seedstream.v1.protocol import MAX_LOGIT_BIAS, MAX_STOP_STRINGS, MAX_STOP_TOKEN_IDS

MAX_INT_DIGITS = 40  # longer JSON integers are parsed as HugeInt and refused by the field that holds one

# Accepted and ignored: they change nothing about the tokens.
_IGNORED = {"user", "store", "metadata", "service_tier", "parallel_tool_calls"}
_COMMON = {
    "model",
    "seed",
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "n",
    "stream",
    "stream_options",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    # vLLM-style extras, and seedstream's own
    "top_k",
    "min_p",
    "repetition_penalty",
    "ignore_eos",
    "min_tokens",
    "stop_token_ids",
    "sample_index",
} | _IGNORED
_COMPLETIONS = _COMMON | {"prompt", "echo", "best_of", "suffix"}
_CHAT = _COMMON | {
    "messages",
    "top_logprobs",
    "max_completion_tokens",
    "response_format",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "modalities",
    "audio",
    "prediction",
    "reasoning_effort",
}
# Parameters that would change what is generated in ways this server cannot do: rejected, never ignored.
_UNSUPPORTED = {
    "suffix": "insertion (suffix) is not supported",
    "tools": "tool calling is not supported",
    "functions": "function calling is not supported",
    "function_call": "function calling is not supported",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "reasoning_effort is not supported (not a reasoning model)",
}
Prompt = str | list[int]


@dataclasses.dataclass
class ParsedRequest:
    """A completions or chat request, checked for types; ranges are checked by the engine."""

    chat: bool
    prompts: list[Prompt] = dataclasses.field(default_factory=list)  # completions: one per prompt
    messages: list[dict[str, str]] = dataclasses.field(default_factory=list)  # chat
    model: str | None = None
    seed: int | None = None
    sampling: dict[str, Any] = dataclasses.field(default_factory=dict)  # SamplingParams keyword arguments
    max_new_tokens: int | None = None
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    n: int = 1
    sample_index: int = 0
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: bool = False  # return the chosen tokens' logprobs
    top_logprobs: int = 0
    names: dict[str, str] = dataclasses.field(default_factory=dict)  # our field -> the request's parameter


class HugeInt:
    """A JSON integer of more than MAX_INT_DIGITS digits: never converted (Python refuses 4,300+ digits
    with a ValueError that names no field, and smaller giants are out of every range anyway)."""

    def __init__(self, text: str):
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def json_int(text: str) -> int | HugeInt:
    """json.loads' parse_int: bounded integers only."""
    return int(text) if len(text) <= MAX_INT_DIGITS else HugeInt(text)


def decode_json(raw: bytes) -> Any:
    """The body's JSON; every way it can fail is a 400 on `body` (giant integers are left to their field)."""
    try:
        return json.loads(raw, parse_int=json_int)
    except RecursionError:
        raise ParamError("body", "JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ParamError("body", f"not valid JSON: {exc}") from None


def check_text(field: str, text: str) -> str:
    """`text` if it is valid Unicode; a lone surrogate (JSON allows "\\ud800") cannot be tokenized."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ParamError(field, f"contains a lone surrogate at character {exc.start}: not valid Unicode text") from None
    return text


def parse_completion(body: Any) -> ParsedRequest:
    out = _parse_common(body, _COMPLETIONS, chat=False)
    if "prompt" not in body or body["prompt"] is None:
        raise ParamError("prompt", "is required: a string, a list of token ids, or a list of either")
    out.prompts = _prompts(body["prompt"])
    out.echo = bool(_boolean(body, "echo"))
    logprobs = _integer(body, "logprobs")
    if logprobs is not None:
        _check_range("logprobs", logprobs, 0, MAX_TOP_N)
        out.logprobs, out.top_logprobs = True, logprobs
    best_of = _integer(body, "best_of")
    if best_of is not None and best_of != out.n:
        raise ParamError("best_of", f"{best_of}: only best_of == n is supported (every sample is returned)")
    out.max_new_tokens = _integer(body, "max_tokens")
    out.names.update(max_new_tokens="max_tokens", top_logprobs="logprobs", input="prompt", prompt_token_ids="prompt")
    return out


def parse_chat(body: Any) -> ParsedRequest:
    out = _parse_common(body, _CHAT, chat=True)
    out.messages = _messages(body.get("messages"))
    out.logprobs = bool(_boolean(body, "logprobs"))
    top = _integer(body, "top_logprobs")
    if top is not None:
        if not out.logprobs:
            raise ParamError("top_logprobs", "needs logprobs: true")
        _check_range("top_logprobs", top, 0, MAX_TOP_N)
        out.top_logprobs = top
    format_ = body.get("response_format")
    if format_ is not None and (not isinstance(format_, dict) or format_.get("type") != "text"):
        raise ParamError("response_format", 'only {"type": "text"} is supported (no JSON mode or schemas)')
    if body.get("tool_choice") not in (None, "none"):
        raise ParamError("tool_choice", "tool calling is not supported")
    if body.get("modalities") not in (None, ["text"]):
        raise ParamError("modalities", 'only ["text"] is supported')
    new, old = _integer(body, "max_completion_tokens"), _integer(body, "max_tokens")
    if new is not None and old is not None and new != old:
        raise ParamError("max_completion_tokens", f"{new} differs from max_tokens={old}: give one of them")
    out.max_new_tokens = new if new is not None else old
    out.names.update(
        max_new_tokens="max_completion_tokens" if new is not None else "max_tokens", input="messages", prompt="messages"
    )
    return out


def _parse_common(body: Any, allowed: set[str], chat: bool) -> ParsedRequest:
    if not isinstance(body, dict):
        raise ParamError("body", "the request body must be a JSON object")
    for key in body:
        if key not in allowed:
            raise ParamError(key, "unrecognized request argument")
        if key in _UNSUPPORTED and body[key] not in (None, [], ""):
            raise ParamError(key, _UNSUPPORTED[key])
    out = ParsedRequest(chat=chat)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ParamError("model", "must be a string")
    if model is not None:
        check_text("model", model)
    out.model = model
    out.seed = _integer(body, "seed")
    for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
        value = _number(body, name)
        if value is not None:
            out.sampling[name] = value
    top_k = _integer(body, "top_k")
    if top_k is not None:
        out.sampling["top_k"] = 0 if top_k == -1 else top_k  # vLLM spells "off" as -1
    bias = body.get("logit_bias")
    if bias is not None:
        out.sampling["logit_bias"] = _logit_bias(bias)
    out.stop = _stop(body.get("stop"))
    out.stop_token_ids = tuple(_int_list(body, "stop_token_ids"))
    out.ignore_eos = bool(_boolean(body, "ignore_eos"))
    min_tokens = _integer(body, "min_tokens")
    out.min_new_tokens = 0 if min_tokens is None else min_tokens
    n = _integer(body, "n")
    out.n = 1 if n is None else n
    index = _integer(body, "sample_index")
    out.sample_index = 0 if index is None else index
    out.stream = bool(_boolean(body, "stream"))
    options = body.get("stream_options")
    if options is not None:
        if not out.stream:
            raise ParamError("stream_options", "only allowed with stream: true")
        if not isinstance(options, dict) or set(options) - {"include_usage", "continuous_usage_stats"}:
            raise ParamError("stream_options", 'allowed: {"include_usage": bool}')
        out.include_usage = bool(_boolean(options, "include_usage", "stream_options.include_usage"))
    out.names.update(min_new_tokens="min_tokens", seed="seed")
    return out


def _prompts(value: Any) -> list[Prompt]:
    if isinstance(value, str):
        return [check_text("prompt", value)]
    if isinstance(value, list) and value:
        if all(_is_int(x) for x in value):
            return [list(value)]
        if all(isinstance(x, str) for x in value):
            return [check_text(f"prompt[{i}]", x) for i, x in enumerate(value)]
        if all(isinstance(x, list) and x and all(_is_int(t) for t in x) for x in value):
            return [list(x) for x in value]
    raise ParamError("prompt", "must be a string, a non-empty list of token ids, or a non-empty list of either")


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ParamError("messages", "is required: a non-empty list of {role, content} objects")
    check_count("messages", len(value), MAX_CHAT_MESSAGES, "messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise ParamError(f"messages[{i}]", "must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise ParamError(f"messages[{i}].role", "must be a non-empty string such as 'user'")
        if isinstance(content, list):  # content parts: text only
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise ParamError(f"messages[{i}].content", "only text parts ({type: text, text}) are supported")
            content = "".join(p["text"] for p in content)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ParamError(f"messages[{i}].content", "must be a string or a list of text parts")
        if m.get("tool_calls") or m.get("function_call"):
            raise ParamError(f"messages[{i}]", "tool and function calls are not supported")
        out.append(
            {"role": check_text(f"messages[{i}].role", role), "content": check_text(f"messages[{i}].content", content)}
        )
    return out


def _logit_bias(value: Any) -> dict[int, float]:
    if not isinstance(value, dict):
        raise ParamError("logit_bias", "must be an object mapping token ids to biases in [-100, 100]")
    check_count("logit_bias", len(value), MAX_LOGIT_BIAS)
    out = {}
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise ParamError("logit_bias", f"key {key!r} is not a token id") from None
        if isinstance(bias, bool) or not isinstance(bias, (int, float)):
            raise ParamError("logit_bias", f"bias for token {token} must be a number")
        out[token] = float(bias)
    return dict(sorted(out.items()))


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (check_text("stop", value),)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        check_count("stop", len(value), MAX_STOP_STRINGS, "strings")
        return tuple(check_text("stop", s) for s in value)
    raise ParamError("stop", "must be a string or a list of strings")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _integer(body: dict[str, Any], key: str, name: str | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, HugeInt):
        raise ParamError(name or key, f"{value!r} is out of range")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value):
        raise ParamError(name or key, f"must be an integer, got {value!r}")
    return value


def _number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParamError(key, f"must be a finite number, got {value!r}")
    return float(value)


def _boolean(body: dict[str, Any], key: str, name: str | None = None) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise ParamError(name or key, f"must be true or false, got {value!r}")
    return value


def _int_list(body: dict[str, Any], key: str) -> list[int]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(_is_int(x) for x in value):
        raise ParamError(key, "must be a list of token ids")
    check_count(key, len(value), MAX_STOP_TOKEN_IDS)
    return value


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ParamError(name, f"{value} out of range: allowed [{lo}, {hi}]")
