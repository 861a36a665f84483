"""The `seedstream` command line's argument parser: the commands, their options and help texts."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from seedstream.v1.protocol import package_version

from ._cli_commands import cmd_generate, cmd_health, cmd_info, cmd_tokenize
from ._cli_server import cmd_cache
from ._cli_verify import cmd_verify
from ._retry import DEFAULT_MAX_RETRIES, DEFAULT_RETRY_BASE_DELAY

if TYPE_CHECKING:
    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, [], "", argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


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
    _add_sampling(p)
    _add_length_and_stopping(p)
    _add_generate_output(p)
    _add_connection(p)
    p.set_defaults(func=cmd_generate)


def _add_sampling(p: argparse.ArgumentParser) -> None:
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


def _add_length_and_stopping(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("length and stopping")
    g.add_argument("--max-new-tokens", "-n", type=int, help="most tokens to generate (server default 256)")
    g.add_argument("--min-new-tokens", type=int, help="fewest tokens before EOS/stop may end it (default 0)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string, repeatable")
    g.add_argument(
        "--stop-token-id", action="append", default=[], type=int, metavar="ID", help="stop token, repeatable"
    )
    g.add_argument("--ignore-eos", action="store_true", help="keep going past the model's EOS token")


def _add_generate_output(p: argparse.ArgumentParser) -> None:
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
    p.set_defaults(func=cmd_verify)


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
    p.set_defaults(func=cmd_tokenize)


def _add_info(sub: _SubParsers) -> None:
    p = sub.add_parser(
        "info", help="show the served model and its reproducibility fingerprint", formatter_class=_Formatter
    )
    p.add_argument("--json", action="store_true", help="print as JSON")
    _add_connection(p)
    p.set_defaults(func=cmd_info)


def _add_health(sub: _SubParsers) -> None:
    p = sub.add_parser(
        "health", help="check grpc.health.v1; exit 0 when SERVING, 1 otherwise", formatter_class=_Formatter
    )
    p.add_argument("--service", default="", help="service name ('' = the whole server)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait up to this long for SERVING")
    _add_connection(p)
    p.set_defaults(func=cmd_health)


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
    p.set_defaults(func=cmd_cache)
