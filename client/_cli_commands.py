"""The `seedstream` commands that call a server: generate, tokenize, info, health."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ._cli_args import client_from_args, generate_kwargs, input_kwargs
from ._cli_output import summary, write, write_json

if TYPE_CHECKING:
    from .client import Client


def cmd_generate(args: argparse.Namespace) -> int:
    kwargs = generate_kwargs(args)
    if (args.samples or 1) > 1 and not args.json:
        raise SystemExit("error: --samples N > 1 needs --json (streamed samples would interleave on stdout)")
    with client_from_args(args) as client:
        if args.json:
            write_json(client.generate(**kwargs).to_dict())
            return 0
        _stream(client, kwargs, args.quiet)
    return 0


def _stream(client: Client, kwargs: dict[str, Any], quiet: bool) -> None:
    """The completion's text to stdout as it comes, then (unless `quiet`) the summary line to stderr."""
    last = None
    stream = client.generate_stream(**kwargs)
    try:
        for chunk in stream:
            if chunk.text:
                write(chunk.text)
            last = chunk
    finally:
        stream.cancel()
    if sys.stdout.isatty():
        write("\n")
    if last is not None and not quiet:
        finish = last.finish_reason.value if last.finish_reason else "none"
        print(summary(last.seed, finish, last.prompt_tokens, last.completion_tokens, last.receipt), file=sys.stderr)


def cmd_tokenize(args: argparse.Namespace) -> int:
    kwargs = input_kwargs(args, "text")
    if args.no_special_tokens:
        kwargs["add_special_tokens"] = False
    with client_from_args(args) as client:
        result = client.tokenize(**kwargs)
    if args.json:
        write_json(result.to_dict())
    else:
        write(" ".join(str(t) for t in result.token_ids) + "\n")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        info = client.model_info()
    data = info.to_dict()
    if args.json:
        write_json(data)
    else:
        width = max(len(k) for k in data)
        write("".join(f"{k:<{width}}  {v}\n" for k, v in data.items()))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from .types import HealthStatus

    with client_from_args(args) as client:
        if args.wait > 0:
            try:
                client.wait_until_serving(timeout=args.wait)
            except Exception:
                pass
        status = client.health(args.service)
    print(status.value)
    return 0 if status is HealthStatus.SERVING else 1
