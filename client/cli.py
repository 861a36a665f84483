"""The `seedstream` command line.

    seedstream serve [--model PATH] [--port 50051] ...     start a server (needs seedstream[server])
    seedstream generate "prompt" --seed 42 ...              stream a completion to stdout
    seedstream tokenize "text"                              show token ids
    seedstream info                                         show the served model
    seedstream health                                       exit 0 when the server is SERVING
    seedstream verify run.jsonl --target HOST:PORT          replay a transcript; exit 0 when all is equal
    seedstream cache verify | clear                         check or empty the server's cache

Client commands need only grpcio and protobuf; `serve` hands its arguments to
the server's own command line (seedstream.server.cli), imported lazily, so
`seedstream --help` and the client commands work without torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from seedstream.v1.protocol import package_version

from ._retry import DEFAULT_MAX_RETRIES, DEFAULT_RETRY_BASE_DELAY

if TYPE_CHECKING:
    from .client import Client
    from .types import Receipt

    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_ERROR, EXIT_INVALID, EXIT_UNAVAILABLE, EXIT_OVERLOADED, EXIT_DEADLINE, EXIT_INTERRUPTED = 1, 2, 3, 4, 5, 130
EXIT_CANNOT_VERIFY = 6  # verify: every record that could be checked was equal, but some need another model or build


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value in (None, "") else value


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, [], "", argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


# --------------------------------------------------------------------------- parser


def _add_serve(sub: _SubParsers) -> None:
    """Listed here; `main` hands `serve ...` to the server's own command line (seedstream.server.cli)."""
    sub.add_parser(
        "serve",
        add_help=False,
        help="start a seedstream server (needs the server extra: pip install 'seedstream[server]')",
    )


def _add_connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument(
        "--target",
        default=None,
        help="server host:port [SEEDSTREAM_TARGET; default localhost:$SEEDSTREAM_PORT or localhost:50051]",
    )
    g.add_argument("--timeout", type=float, default=None, help="deadline in seconds (default: none)")
    g.add_argument(
        "--max-retries",
        type=int,
        default=DEFAULT_MAX_RETRIES,
        metavar="N",
        help="times a call the server refused as overloaded (RESOURCE_EXHAUSTED, queue full) is sent again, "
        f"after a random wait of up to {DEFAULT_RETRY_BASE_DELAY:g} s x 2^retry; 0 = never",
    )
    g.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    g.add_argument("--root-cert", metavar="PEM", help="use TLS, trusting this CA certificate file")
    g.add_argument("--client-cert", metavar="PEM", help="client certificate chain file (mutual TLS)")
    g.add_argument("--client-key", metavar="PEM", help="client private key file (mutual TLS)")
    g.add_argument(
        "--metadata", "-H", action="append", default=[], metavar="KEY=VALUE", help="extra gRPC metadata, repeatable"
    )
    g.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="file holding the API key to send as 'authorization: Bearer KEY' "
        "[else the SEEDSTREAM_API_KEY environment variable]",
    )


def _add_input(p: argparse.ArgumentParser, text_name: str) -> None:
    p.add_argument(text_name, nargs="?", help=f"the {text_name}; '-' reads it from stdin")
    p.add_argument(
        "--chat",
        action="store_true",
        help=f"send the {text_name} as a user message, rendered with the model's chat template",
    )
    p.add_argument("--system", metavar="TEXT", help="a system message before the user message (implies --chat)")
    p.add_argument(
        "--messages-json",
        metavar="JSON",
        help='the whole chat as JSON: [{"role": "user", "content": "..."}, ...] (a file path or the JSON itself)',
    )


def _add_generate(sub: _SubParsers) -> None:
    p = sub.add_parser(
        "generate",
        help="generate a completion (streamed to stdout)",
        formatter_class=_Formatter,
        description=(
            "Stream a completion's text to stdout, exactly the bytes of the result's text; a summary\n"
            "with the seed used goes to stderr (replay it with --seed). --json prints the full result.\n"
            "Sampling options left unset take the server's defaults.\n\n"
            "example: seedstream generate 'Once upon a time' --seed 42 --temperature 0.8 --max-new-tokens 64"
        ),
    )
    _add_input(p, "prompt")
    p.add_argument("--token-ids", metavar="IDS", help="comma-separated prompt token ids instead of a prompt")
    s = p.add_argument_group("sampling (unset: server default)")
    s.add_argument("--seed", type=int, help="random seed in [0, 2^64); unset: the server draws one and reports it")
    s.add_argument("--temperature", "-t", type=float, help="0 = greedy (server default 1.0)")
    s.add_argument("--top-k", type=int, help="keep the k most likely tokens; 0 = off (default 0)")
    s.add_argument("--top-p", type=float, help="nucleus sampling in (0, 1]; 1 = off (default 1.0)")
    s.add_argument("--min-p", type=float, help="in [0, 1]; 0 = off (default 0.0)")
    s.add_argument("--repetition-penalty", type=float, help="> 0; 1 = off (default 1.0)")
    s.add_argument("--presence-penalty", type=float, help="in [-2, 2] (default 0.0)")
    s.add_argument("--frequency-penalty", type=float, help="in [-2, 2] (default 0.0)")
    s.add_argument(
        "--logit-bias", action="append", default=[], metavar="ID=BIAS", help="additive bias for a token id, repeatable"
    )
    s.add_argument("--sample-index", type=int, default=0, help="which of the seed's independent streams to draw")
    s.add_argument(
        "--samples",
        type=int,
        default=None,
        metavar="N",
        help="n samples of the seed (streams sample_index .. sample_index + N - 1); needs --json if N > 1",
    )
    g = p.add_argument_group("length and stopping")
    g.add_argument("--max-new-tokens", "-n", type=int, help="most tokens to generate (server default 256)")
    g.add_argument("--min-new-tokens", type=int, help="fewest tokens before EOS/stop may end it (default 0)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string, repeatable")
    g.add_argument(
        "--stop-token-id", action="append", default=[], type=int, metavar="ID", help="stop token, repeatable"
    )
    g.add_argument("--ignore-eos", action="store_true", help="keep going past the model's EOS token")
    o = p.add_argument_group("output")
    o.add_argument(
        "--json", action="store_true", help="print the full result as JSON (unary call) instead of streaming"
    )
    o.add_argument("--top-logprobs", type=int, default=0, help="top alternatives per token in --json output, 0..20")
    o.add_argument(
        "--logprobs-mode",
        choices=("raw", "processed"),
        default="",
        help="logprobs under the model's raw distribution (default) or the processed one sampled from",
    )
    o.add_argument(
        "--echo-prompt-logprobs", action="store_true", help="also return the prompt tokens' logprobs (--json)"
    )
    o.add_argument("--request-id", default="", help="label for the server log")
    o.add_argument("--quiet", "-q", action="store_true", help="no summary line on stderr")
    o.add_argument(
        "--save",
        metavar="FILE",
        help="append the request and the result to this transcript (JSON Lines, docs/transcripts.md); "
        "`seedstream verify FILE` replays it",
    )
    _add_connection(p)
    p.set_defaults(func=_cmd_generate)


def _add_verify(sub: _SubParsers) -> None:
    p = sub.add_parser(
        "verify",
        help="check a transcript: replay it on a server, and/or check its signatures offline",
        formatter_class=_Formatter,
        description=(
            "Check every record of a transcript (docs/transcripts.md). Offline: each receipt's digest\n"
            "must match its fields, and with --public-key each receipt must carry a valid signature by\n"
            "that key over the record's token ids (and scores). Then, unless --offline (the default when\n"
            "--public-key is given without --target), each request is replayed on the server and must give\n"
            "the same token ids, logprob bits, text and receipt digest. A server with another model or\n"
            "build answers 'cannot verify'. Exit 0: all equal; 1: a difference or an invalid record;\n"
            "6: the rest was equal but some records cannot be verified on this server. Records taken\n"
            "through the OpenAI-compatible front replay there: --target http://HOST:PORT."
        ),
    )
    p.add_argument("file", help="the transcript (JSON Lines)")
    p.add_argument("--public-key", metavar="FILE", help="the server's Ed25519 public key (PEM, or 64 hex digits)")
    p.add_argument("--offline", action="store_true", help="check digests and signatures only; contact no server")
    p.add_argument("--concurrency", type=int, default=1, metavar="N", help="replays in flight at once")
    p.add_argument("--quiet", "-q", action="store_true", help="print only records that are not equal")
    _add_connection(p)
    p.set_defaults(func=_cmd_verify)


def _add_tokenize(sub: _SubParsers) -> None:
    p = sub.add_parser(
        "tokenize",
        help="show the token ids of a text or chat",
        formatter_class=_Formatter,
        description="Tokenize exactly as generate would (one line: the ids; --json adds each token's text).",
    )
    _add_input(p, "text")
    p.add_argument(
        "--no-special-tokens", action="store_true", help="do not add the tokenizer's special tokens (text only)"
    )
    p.add_argument("--json", action="store_true", help="print ids and token texts as JSON")
    _add_connection(p)
    p.set_defaults(func=_cmd_tokenize)


def _add_info(sub: _SubParsers) -> None:
    p = sub.add_parser(
        "info", help="show the served model and its reproducibility fingerprint", formatter_class=_Formatter
    )
    p.add_argument("--json", action="store_true", help="print as JSON")
    _add_connection(p)
    p.set_defaults(func=_cmd_info)


def _add_health(sub: _SubParsers) -> None:
    p = sub.add_parser(
        "health", help="check grpc.health.v1; exit 0 when SERVING, 1 otherwise", formatter_class=_Formatter
    )
    p.add_argument("--service", default="", help="service name ('' = the whole server)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait up to this long for SERVING")
    _add_connection(p)
    p.set_defaults(func=_cmd_health)


def _add_cache(sub: _SubParsers) -> None:
    p = sub.add_parser(
        "cache",
        help="check (verify) or empty (clear) the server's cache of converted models, packed weights and kernels",
        description="verify: check every cache entry against its manifest (exit 1 if any is damaged; the next "
        "start rebuilds it). clear: remove everything in the cache. Needs the server extra.",
        formatter_class=_Formatter,
    )
    p.add_argument("action", choices=("verify", "clear"))
    p.add_argument("--cache-dir", help="the cache folder [SEEDSTREAM_CACHE; default ~/.cache/seedstream]")
    p.set_defaults(func=_cmd_cache)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seedstream",
        description="seedstream: reproducible LLM generation over gRPC. Identical seeds, identical token streams.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'seedstream COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"seedstream {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(sub)
    _add_generate(sub)
    _add_tokenize(sub)
    _add_info(sub)
    _add_health(sub)
    _add_verify(sub)
    _add_cache(sub)
    return parser


# --------------------------------------------------------------------------- commands


def _server_part(name: str) -> Any:
    """A module of the server, imported only for the commands that run it (the client installs without it),
    or None after saying how to install it."""
    import importlib

    try:
        return importlib.import_module(f"seedstream.server.{name}")
    except ImportError as exc:
        print(f"error: the server is not installed ({exc}); pip install 'seedstream[server]'", file=sys.stderr)
        return None


def _serve(argv: Sequence[str]) -> int:
    server_cli = _server_part("cli")
    return EXIT_ERROR if server_cli is None else int(server_cli.main(argv))


def _cmd_cache(args: argparse.Namespace) -> int:
    from pathlib import Path

    cachefs = _server_part("cachefs")
    if cachefs is None:
        return EXIT_ERROR
    root = Path(args.cache_dir).expanduser() if args.cache_dir else cachefs.cache_root()
    return int(cachefs.verify_cache(root) if args.action == "verify" else cachefs.clear_cache(root))


def _client(args: argparse.Namespace) -> Client:
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
        api_key=_api_key(args),
        max_retries=args.max_retries,
        transcript=getattr(args, "save", None),
    )


def _api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key-file (first non-empty line), else $SEEDSTREAM_API_KEY; never a flag value."""
    if getattr(args, "api_key_file", None):
        with open(args.api_key_file, encoding="utf-8") as fh:
            lines = [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]
        if not lines:
            raise SystemExit(f"error: {args.api_key_file} holds no API key")
        return lines[0].split()[-1]  # 'KEY' or 'NAME KEY', as in the server's key file
    return _env("SEEDSTREAM_API_KEY")


def _read_text(value: str | None) -> str | None:
    if value == "-":
        return sys.stdin.read()
    return value


def _input_kwargs(args: argparse.Namespace, text_name: str) -> dict[str, Any]:
    text = _read_text(getattr(args, text_name))
    if args.messages_json:
        raw = args.messages_json
        if os.path.exists(raw):
            with open(raw, encoding="utf-8") as fh:
                raw = fh.read()
        try:
            messages = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"error: --messages-json is not valid JSON: {exc}")
        if text is not None:
            messages.append({"role": "user", "content": text})
        return {"messages": messages}
    if args.chat or args.system is not None:
        if text is None:
            raise SystemExit(f"error: give the {text_name} (or '-' to read it from stdin)")
        messages = [{"role": "system", "content": args.system}] if args.system is not None else []
        return {"messages": messages + [{"role": "user", "content": text}]}
    ids = getattr(args, "token_ids", None)
    if ids is not None:
        if text is not None:
            raise SystemExit(f"error: give either a {text_name} or --token-ids, not both")
        try:
            return {"prompt_token_ids": [int(t) for t in ids.replace(" ", "").split(",") if t]}
        except ValueError:
            raise SystemExit(f"error: --token-ids expects comma-separated integers, got {ids!r}")
    if text is None:
        raise SystemExit(f"error: give the {text_name} (or '-' to read it from stdin)")
    return {"prompt" if text_name == "prompt" else "text": text}


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


def _write(text: str) -> None:
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
    if out is not None:
        out.write(text.encode("utf-8"))
        out.flush()
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def _summary(seed: int, finish: str, prompt_tokens: int, completion_tokens: int, receipt: Receipt | None) -> str:
    line = f"[seed={seed} finish={finish} prompt_tokens={prompt_tokens} completion_tokens={completion_tokens}"
    if receipt is not None:
        line += f" receipt={receipt.digest[:16]}"
    return line + "]"


def _cmd_generate(args: argparse.Namespace) -> int:
    kwargs = _input_kwargs(args, "prompt")
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
    if (args.samples or 1) > 1 and not args.json:
        raise SystemExit("error: --samples N > 1 needs --json (streamed samples would interleave on stdout)")
    with _client(args) as client:
        if args.json:
            result = client.generate(**kwargs)
            _write(json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n")
            return 0
        last = None
        stream = client.generate_stream(**kwargs)
        try:
            for chunk in stream:
                if chunk.text:
                    _write(chunk.text)
                last = chunk
        finally:
            stream.cancel()
        if sys.stdout.isatty():
            _write("\n")
        if last is not None and not args.quiet:
            finish = last.finish_reason.value if last.finish_reason else "none"
            print(
                _summary(last.seed, finish, last.prompt_tokens, last.completion_tokens, last.receipt), file=sys.stderr
            )
    return 0


def _cmd_tokenize(args: argparse.Namespace) -> int:
    kwargs = _input_kwargs(args, "text")
    if args.no_special_tokens:
        kwargs["add_special_tokens"] = False
    with _client(args) as client:
        result = client.tokenize(**kwargs)
    if args.json:
        _write(json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n")
    else:
        _write(" ".join(str(t) for t in result.token_ids) + "\n")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.model_info()
    data = info.to_dict()
    if args.json:
        _write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    else:
        width = max(len(k) for k in data)
        _write("".join(f"{k:<{width}}  {v}\n" for k, v in data.items()))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from . import transcript, verify
    from .http_transcript import HttpTarget

    if args.concurrency < 1:
        raise SystemExit(f"error: --concurrency {args.concurrency}: must be >= 1")
    key = None
    if args.public_key:
        from seedstream.v1 import signing

        with open(args.public_key, "rb") as fh:
            try:
                key = signing.load_public_key_hex(fh.read())
            except (ValueError, signing.SigningUnavailable) as exc:
                raise SystemExit(f"error: --public-key {args.public_key}: {exc}")
    try:
        records = list(transcript.read_records(args.file))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {exc}")
    offline = args.offline or (key is not None and args.target is None)

    def report(outcome: verify.Outcome) -> None:
        if not (args.quiet and outcome.status in (verify.EQUAL, verify.VALID, verify.CONSISTENT)):
            print(outcome, flush=True)

    progress = verify.Progress(len(records))
    if offline:
        outcomes = verify.verify_records(records, None, key, report=report, progress=progress)
    elif (args.target or "").startswith(("http://", "https://")):  # records taken through the HTTP front
        target = HttpTarget(args.target, api_key=_api_key(args), timeout=args.timeout)
        outcomes = verify.verify_records(records, target, key, args.concurrency, report, progress)
    else:
        with _client(args) as client:
            outcomes = verify.verify_records(records, client, key, args.concurrency, report, progress)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    print(f"verify: {len(outcomes)} records: " + ", ".join(f"{v} {k}" for k, v in counts.items()), file=sys.stderr)
    code = verify.exit_code(outcomes)
    return EXIT_CANNOT_VERIFY if code == 6 else code


def _cmd_health(args: argparse.Namespace) -> int:
    from .types import HealthStatus

    with _client(args) as client:
        if args.wait > 0:
            try:
                client.wait_until_serving(timeout=args.wait)
            except Exception:
                pass
        status = client.health(args.service)
    print(status.value)
    return 0 if status is HealthStatus.SERVING else 1


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    from .errors import (
        DeadlineExceededError,
        InvalidArgumentError,
        OverloadedError,
        SeedstreamError,
        UnavailableError,
    )

    try:
        code: int = args.func(args)  # a _cmd_* function
        return code
    except InvalidArgumentError as exc:
        print(f"error: invalid argument: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except UnavailableError as exc:
        print(f"error: unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except OverloadedError as exc:
        print(f"error: overloaded: {exc}", file=sys.stderr)
        return EXIT_OVERLOADED
    except DeadlineExceededError as exc:
        print(f"error: deadline exceeded: {exc}", file=sys.stderr)
        return EXIT_DEADLINE
    except SeedstreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
