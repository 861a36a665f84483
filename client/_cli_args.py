"""The `seedstream` command line's arguments turned into what the client takes: a Client and request kwargs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client


def env(name: str, default: str | None = None) -> str | None:
    """The environment variable `name`; unset or empty: `default`."""
    value = os.environ.get(name)
    return default if value in (None, "") else value


def client_from_args(args: argparse.Namespace) -> Client:
    """A Client from the connection options (and generate's --save transcript)."""
    from .client import Client

    metadata: list[tuple[str, str]] = []
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --metadata expects KEY=VALUE, got {item!r}")
        metadata.append((key.strip().lower(), value))
    if args.max_retries < 0:
        raise SystemExit(f"error: --max-retries {args.max_retries}: must be >= 0")
    return Client(
        args.target,
        timeout=args.timeout,
        secure=args.tls,
        root_certificates=args.root_cert,
        certificate_chain=args.client_cert,
        private_key=args.client_key,
        metadata=metadata or None,
        api_key=api_key(args),
        max_retries=args.max_retries,
        transcript=getattr(args, "save", None),
    )


def api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key-file (first non-empty line), else $SEEDSTREAM_API_KEY; never a flag value."""
    if getattr(args, "api_key_file", None):
        with open(args.api_key_file, encoding="utf-8") as fh:
            lines = [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]
        if not lines:
            raise SystemExit(f"error: {args.api_key_file} holds no API key")
        return lines[0].split()[-1]  # 'KEY' or 'NAME KEY', as in the server's key file
    return env("SEEDSTREAM_API_KEY")


def input_kwargs(args: argparse.Namespace, text_name: str) -> dict[str, Any]:
    """The request's input: the text (`text_name`: prompt or text), a chat, or prompt token ids."""
    text = _read_text(getattr(args, text_name))
    if args.messages_json:
        return {"messages": _messages_json(args.messages_json, text)}
    if args.chat or args.system is not None:
        if text is None:
            raise SystemExit(f"error: give the {text_name} (or '-' to read it from stdin)")
        messages = [{"role": "system", "content": args.system}] if args.system is not None else []
        return {"messages": messages + [{"role": "user", "content": text}]}
    ids = getattr(args, "token_ids", None)
    if ids is not None:
        if text is not None:
            raise SystemExit(f"error: give either a {text_name} or --token-ids, not both")
        return {"prompt_token_ids": _token_ids(ids)}
    if text is None:
        raise SystemExit(f"error: give the {text_name} (or '-' to read it from stdin)")
    return {"prompt" if text_name == "prompt" else "text": text}


def _read_text(value: str | None) -> str | None:
    if value == "-":
        return sys.stdin.read()
    return value


def _messages_json(raw: str, text: str | None) -> list[Any]:
    """--messages-json (a file path or the JSON itself), with `text` appended as a user message if given."""
    if os.path.exists(raw):
        with open(raw, encoding="utf-8") as fh:
            raw = fh.read()
    try:
        messages: list[Any] = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: --messages-json is not valid JSON: {exc}")
    if text is not None:
        messages.append({"role": "user", "content": text})
    return messages


def _token_ids(ids: str) -> list[int]:
    try:
        return [int(t) for t in ids.replace(" ", "").split(",") if t]
    except ValueError:
        raise SystemExit(f"error: --token-ids expects comma-separated integers, got {ids!r}")


def _logit_bias(items: list[str]) -> dict[int, float] | None:
    if not items:
        return None
    out: dict[int, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[int(key)] = float(value)
        except ValueError:
            raise SystemExit(f"error: --logit-bias expects ID=BIAS, got {item!r}")
        if not sep:
            raise SystemExit(f"error: --logit-bias expects ID=BIAS, got {item!r}")
    return out


def generate_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """`Client.generate`'s kwargs from generate's options (those left unset: None, the server's default)."""
    kwargs = input_kwargs(args, "prompt")
    kwargs.update(
        seed=args.seed,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        logit_bias=_logit_bias(args.logit_bias),
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        stop=args.stop or None,
        stop_token_ids=args.stop_token_id or None,
        ignore_eos=args.ignore_eos,
        top_logprobs=args.top_logprobs,
        sample_index=args.sample_index,
        n=args.samples,
        logprobs_mode=args.logprobs_mode,
        echo_prompt_logprobs=args.echo_prompt_logprobs,
        request_id=args.request_id,
    )
    return kwargs
