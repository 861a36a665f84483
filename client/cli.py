"""The `seedstream` command line.

    seedstream serve [--model PATH] [--port 50051] ...     start a server (needs seedstream[server])
    seedstream generate "prompt" --seed 42 ...              stream a completion to stdout
    seedstream tokenize "text"                              show token ids
    seedstream info                                         show the served model
    seedstream health                                       exit 0 when the server is SERVING

Client commands need only grpcio and protobuf; `serve` imports the server
lazily, so `seedstream --help` and the client commands work without torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

EXIT_ERROR, EXIT_INVALID, EXIT_UNAVAILABLE, EXIT_OVERLOADED, EXIT_DEADLINE, EXIT_INTERRUPTED = 1, 2, 3, 4, 5, 130


def _env(name: str, default=None):
    value = os.environ.get(name)
    return default if value in (None, "") else value


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("seedstream")
    except Exception:
        return "unknown"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default when it has a meaningful one."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, [], "", argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


# --------------------------------------------------------------------------- parser


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="start a seedstream server (needs the server extra: pip install 'seedstream[server]')",
        formatter_class=_Formatter,
        description=(
            "Start the gRPC server. It answers at once (health NOT_SERVING, requests UNAVAILABLE) and\n"
            "serves once the model is loaded; loading progress is logged to stderr. The first start of a\n"
            "model converts it into a cache; later starts are fast. SIGTERM/SIGINT: stop taking requests,\n"
            "let in-flight ones finish within --grace-period, exit 0.\n"
            "Every flag can also be set by the environment variable shown in its help."
        ),
    )
    p.add_argument("--model", default=_env("SEEDSTREAM_MODEL"),
                   help="local transformers model folder or .gguf file [SEEDSTREAM_MODEL]; "
                        "default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--host", default=_env("SEEDSTREAM_HOST", "127.0.0.1"),
                   help="address to listen on; 0.0.0.0 for every interface [SEEDSTREAM_HOST]")
    p.add_argument("--port", type=int, default=int(_env("SEEDSTREAM_PORT", 50051)),
                   help="TCP port; 0 picks a free one [SEEDSTREAM_PORT]")
    p.add_argument("--http-port", type=int, default=_env("SEEDSTREAM_HTTP_PORT"),
                   help="also serve the OpenAI-compatible HTTP API and the playground page on this port "
                        "(same host); 0 picks a free one; default: off [SEEDSTREAM_HTTP_PORT]")
    p.add_argument("--device", default=_env("SEEDSTREAM_DEVICE", "auto"),
                   help="auto (cuda when available, else cpu), cpu, cuda or cuda:N [SEEDSTREAM_DEVICE]")
    p.add_argument("--dtype", default=_env("SEEDSTREAM_DTYPE", "float32"), choices=("float32", "bfloat16", "float16"),
                   help="compute dtype; part of the reproducibility promise [SEEDSTREAM_DTYPE]")
    p.add_argument("--max-batch-size", type=int, default=int(_env("SEEDSTREAM_MAX_BATCH_SIZE", 64)),
                   help="most sequences decoding at once [SEEDSTREAM_MAX_BATCH_SIZE]")
    p.add_argument("--max-queue", type=int, default=int(_env("SEEDSTREAM_MAX_QUEUE", 256)),
                   help="most requests waiting for a slot; beyond it RESOURCE_EXHAUSTED [SEEDSTREAM_MAX_QUEUE]")
    p.add_argument("--max-kv-tokens", type=int, default=_env("SEEDSTREAM_MAX_KV_TOKENS"),
                   help="KV-cache budget in token positions over all running sequences (each counted as prompt + "
                        "max_new_tokens); requests beyond it wait in the queue (default 262144) [SEEDSTREAM_MAX_KV_TOKENS]")
    p.add_argument("--max-new-tokens-limit", type=int, default=int(_env("SEEDSTREAM_MAX_NEW_TOKENS_LIMIT", 4096)),
                   help="largest max_new_tokens a request may ask for [SEEDSTREAM_MAX_NEW_TOKENS_LIMIT]")
    p.add_argument("--default-max-new-tokens", type=int, default=int(_env("SEEDSTREAM_DEFAULT_MAX_NEW_TOKENS", 256)),
                   help="max_new_tokens when a request leaves it unset [SEEDSTREAM_DEFAULT_MAX_NEW_TOKENS]")
    p.add_argument("--prefill-chunk", type=int, default=_env("SEEDSTREAM_PREFILL_CHUNK"),
                   help="prompt tokens per prefill chunk (engine default if unset); a tuning knob: prefill "
                        "equals decode bit for bit, so it changes no token [SEEDSTREAM_PREFILL_CHUNK]")
    p.add_argument("--max-step-tokens", type=int, default=_env("SEEDSTREAM_MAX_STEP_TOKENS"),
                   help="token rows per engine step (engine default if unset) [SEEDSTREAM_MAX_STEP_TOKENS]")
    p.add_argument("--threads", type=int, default=_env("SEEDSTREAM_THREADS"),
                   help="torch intra-op threads (torch's default if unset) [SEEDSTREAM_THREADS]")
    p.add_argument("--backend", default=_env("SEEDSTREAM_BACKEND"), choices=("auto", "kernels", "torch"),
                   help="forward pass: 'kernels' = seedstream's C++ CPU kernels (built with the system C++ "
                        "compiler on first start, cached; the same bits on every x86 CPU), 'torch' = the torch path "
                        "(CUDA, bfloat16/float16), 'auto' (default) = kernels on cpu/float32 when they build, else "
                        "torch [SEEDSTREAM_BACKEND]")
    p.add_argument("--weights", default=_env("SEEDSTREAM_WEIGHTS"), choices=("auto", "f32", "q8_0", "q4_1"),
                   help="weight format of the kernels: 'auto' (default) = the file's own (a GGUF's quantisation, "
                        "else f32), or f32, q8_0, q4_1 (quantised on load when the file is more precise); part of "
                        "engine_version and the receipt [SEEDSTREAM_WEIGHTS]")
    p.add_argument("--prefix-cache-mib", type=float, default=_env("SEEDSTREAM_PREFIX_CACHE_MIB"),
                   help="prefix cache budget in MiB (default 1024; 0 = off): prompt KV reused exactly, "
                        "LRU-evicted; changes no token [SEEDSTREAM_PREFIX_CACHE_MIB]")
    p.add_argument("--grace-period", type=float, default=float(_env("SEEDSTREAM_GRACE_PERIOD", 30.0)),
                   help="seconds in-flight requests get to finish on shutdown [SEEDSTREAM_GRACE_PERIOD]")
    p.add_argument("--tls-cert", default=_env("SEEDSTREAM_TLS_CERT"),
                   help="PEM certificate chain file: serve TLS instead of plaintext [SEEDSTREAM_TLS_CERT]")
    p.add_argument("--tls-key", default=_env("SEEDSTREAM_TLS_KEY"),
                   help="PEM private key file for --tls-cert [SEEDSTREAM_TLS_KEY]")
    p.add_argument("--log-level", default=_env("SEEDSTREAM_LOG_LEVEL", "INFO"),
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), type=str.upper,
                   help="log verbosity; INFO logs one line per request [SEEDSTREAM_LOG_LEVEL]")
    _add_serve_hardening(p)
    _add_observability(p)
    p.set_defaults(func=_cmd_serve)


def _optional(cast, name: str):
    value = _env(name)
    return None if value is None else cast(value)


def _add_serve_hardening(p) -> None:
    """Authentication, TLS client certificates, reflection, and connection/request limits."""
    g = p.add_argument_group("security and limits")
    g.add_argument("--api-key-file", default=_env("SEEDSTREAM_API_KEY_FILE"), metavar="PATH",
                   help="require API keys: a file with one 'KEY' or 'NAME KEY' per line; clients send "
                        "'authorization: Bearer KEY'. Keys may also come from SEEDSTREAM_API_KEYS "
                        "(comma-separated), never from a flag [SEEDSTREAM_API_KEY_FILE]")
    g.add_argument("--tls-client-ca", default=_env("SEEDSTREAM_TLS_CLIENT_CA"), metavar="PEM",
                   help="require client certificates signed by this CA (mutual TLS; needs --tls-cert) "
                        "[SEEDSTREAM_TLS_CLIENT_CA]")
    g.add_argument("--no-reflection", action="store_true", default=_env("SEEDSTREAM_NO_REFLECTION") == "1",
                   help="do not serve gRPC server reflection [SEEDSTREAM_NO_REFLECTION=1]")
    g.add_argument("--insecure", action="store_true", default=_env("SEEDSTREAM_INSECURE") == "1",
                   help="accept plaintext without API keys on a non-loopback address where that is refused "
                        "(the Docker image) [SEEDSTREAM_INSECURE=1]")
    g.add_argument("--max-input-chars", type=int, default=_optional(int, "SEEDSTREAM_MAX_INPUT_CHARS"),
                   help="most text characters in one request, checked before tokenizing (default 32 x the "
                        "model's context) [SEEDSTREAM_MAX_INPUT_CHARS]")
    g.add_argument("--max-input-tokens", type=int, default=_optional(int, "SEEDSTREAM_MAX_INPUT_TOKENS"),
                   help="most tokens in one Score, ScoreRolling or Tokenize request (default 16 x the model's "
                        "context) [SEEDSTREAM_MAX_INPUT_TOKENS]")
    g.add_argument("--max-deadline", type=float, default=float(_env("SEEDSTREAM_MAX_DEADLINE", 600.0)),
                   help="seconds any call may run, whatever the client's deadline; 0 = no limit "
                        "[SEEDSTREAM_MAX_DEADLINE]")
    g.add_argument("--max-queue-per-client", type=int, default=_optional(int, "SEEDSTREAM_MAX_QUEUE_PER_CLIENT"),
                   help="most waiting requests from one client (API key, else peer address); default "
                        "--max-queue [SEEDSTREAM_MAX_QUEUE_PER_CLIENT]")
    g.add_argument("--keepalive-time", type=float, default=float(_env("SEEDSTREAM_KEEPALIVE_TIME", 60.0)),
                   help="seconds between keepalive pings on an idle connection [SEEDSTREAM_KEEPALIVE_TIME]")
    g.add_argument("--keepalive-timeout", type=float, default=float(_env("SEEDSTREAM_KEEPALIVE_TIMEOUT", 20.0)),
                   help="seconds to wait for a ping's answer before closing [SEEDSTREAM_KEEPALIVE_TIMEOUT]")
    g.add_argument("--max-connection-idle", type=float, default=float(_env("SEEDSTREAM_MAX_CONNECTION_IDLE", 300.0)),
                   help="close connections without calls after this many seconds; 0 = never "
                        "[SEEDSTREAM_MAX_CONNECTION_IDLE]")
    g.add_argument("--max-connection-age", type=float, default=_optional(float, "SEEDSTREAM_MAX_CONNECTION_AGE"),
                   help="gracefully close connections older than this many seconds (spreads clients over "
                        "replicas); default never [SEEDSTREAM_MAX_CONNECTION_AGE]")
    g.add_argument("--max-streams-per-connection", type=int,
                   default=int(_env("SEEDSTREAM_MAX_STREAMS_PER_CONNECTION", 128)),
                   help="most concurrent calls on one connection [SEEDSTREAM_MAX_STREAMS_PER_CONNECTION]")


def _hardening_options(args) -> dict:
    """ServeOptions.hardening from the flags of _add_serve_hardening."""
    return {
        "api_key_file": args.api_key_file,
        "tls_client_ca": args.tls_client_ca,
        "reflection": not args.no_reflection,
        "insecure": args.insecure,
        "max_input_chars": args.max_input_chars,
        "max_input_tokens": args.max_input_tokens,
        "max_deadline": args.max_deadline,
        "max_queue_per_client": args.max_queue_per_client,
        "keepalive_time": args.keepalive_time,
        "keepalive_timeout": args.keepalive_timeout,
        "max_connection_idle": args.max_connection_idle,
        "max_connection_age": args.max_connection_age,
        "max_streams_per_connection": args.max_streams_per_connection,
    }


def _add_observability(p) -> None:
    """Prometheus metrics endpoint and log format."""
    g = p.add_argument_group("observability")
    g.add_argument("--metrics-port", type=int, default=_env("SEEDSTREAM_METRICS_PORT"),
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (off if unset; 0 picks a free port) "
                        "[SEEDSTREAM_METRICS_PORT]")
    g.add_argument("--metrics-host", default=_env("SEEDSTREAM_METRICS_HOST"),
                   help="address for the metrics endpoint (default: --host) [SEEDSTREAM_METRICS_HOST]")
    g.add_argument("--log-format", default=_env("SEEDSTREAM_LOG_FORMAT", "text"), choices=("text", "json"),
                   help="'json': one JSON object per log line; a request's line carries request_id, key_id, "
                        "seed, token counts, ttft_s, time_s and status [SEEDSTREAM_LOG_FORMAT]")


def _add_connection(p) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--target", default=None,
                   help="server host:port [SEEDSTREAM_TARGET; default localhost:$SEEDSTREAM_PORT or localhost:50051]")
    g.add_argument("--timeout", type=float, default=None, help="deadline in seconds (default: none)")
    g.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    g.add_argument("--root-cert", metavar="PEM", help="use TLS, trusting this CA certificate file")
    g.add_argument("--client-cert", metavar="PEM", help="client certificate chain file (mutual TLS)")
    g.add_argument("--client-key", metavar="PEM", help="client private key file (mutual TLS)")
    g.add_argument("--metadata", "-H", action="append", default=[], metavar="KEY=VALUE",
                   help="extra gRPC metadata, repeatable")
    g.add_argument("--api-key-file", metavar="PATH",
                   help="file holding the API key to send as 'authorization: Bearer KEY' "
                        "[else the SEEDSTREAM_API_KEY environment variable]")


def _add_input(p, text_name: str) -> None:
    p.add_argument(text_name, nargs="?", help=f"the {text_name}; '-' reads it from stdin")
    p.add_argument("--chat", action="store_true",
                   help=f"send the {text_name} as a user message, rendered with the model's chat template")
    p.add_argument("--system", metavar="TEXT", help="a system message before the user message (implies --chat)")
    p.add_argument("--messages-json", metavar="JSON",
                   help='the whole chat as JSON: [{"role": "user", "content": "..."}, ...] (a file path or the JSON itself)')


def _add_generate(sub) -> None:
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
    s.add_argument("--logit-bias", action="append", default=[], metavar="ID=BIAS",
                   help="additive bias for a token id, repeatable")
    s.add_argument("--sample-index", type=int, default=0, help="which of the seed's independent streams to draw")
    s.add_argument("--samples", type=int, default=None, metavar="N",
                   help="n samples of the seed (streams sample_index .. sample_index + N - 1); needs --json if N > 1")
    g = p.add_argument_group("length and stopping")
    g.add_argument("--max-new-tokens", "-n", type=int, help="most tokens to generate (server default 256)")
    g.add_argument("--min-new-tokens", type=int, help="fewest tokens before EOS/stop may end it (default 0)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string, repeatable")
    g.add_argument("--stop-token-id", action="append", default=[], type=int, metavar="ID", help="stop token, repeatable")
    g.add_argument("--ignore-eos", action="store_true", help="keep going past the model's EOS token")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print the full result as JSON (unary call) instead of streaming")
    o.add_argument("--top-logprobs", type=int, default=0, help="top alternatives per token in --json output, 0..20")
    o.add_argument("--logprobs-mode", choices=("raw", "processed"), default="",
                   help="logprobs under the model's raw distribution (default) or the processed one sampled from")
    o.add_argument("--echo-prompt-logprobs", action="store_true", help="also return the prompt tokens' logprobs (--json)")
    o.add_argument("--request-id", default="", help="label for the server log")
    o.add_argument("--quiet", "-q", action="store_true", help="no summary line on stderr")
    _add_connection(p)
    p.set_defaults(func=_cmd_generate)


def _add_tokenize(sub) -> None:
    p = sub.add_parser("tokenize", help="show the token ids of a text or chat", formatter_class=_Formatter,
                       description="Tokenize exactly as generate would (one line: the ids; --json adds each token's text).")
    _add_input(p, "text")
    p.add_argument("--no-special-tokens", action="store_true", help="do not add the tokenizer's special tokens (text only)")
    p.add_argument("--json", action="store_true", help="print ids and token texts as JSON")
    _add_connection(p)
    p.set_defaults(func=_cmd_tokenize)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="show the served model and its reproducibility fingerprint",
                       formatter_class=_Formatter)
    p.add_argument("--json", action="store_true", help="print as JSON")
    _add_connection(p)
    p.set_defaults(func=_cmd_info)


def _add_health(sub) -> None:
    p = sub.add_parser("health", help="check grpc.health.v1; exit 0 when SERVING, 1 otherwise",
                       formatter_class=_Formatter)
    p.add_argument("--service", default="", help="service name ('' = the whole server)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait up to this long for SERVING")
    _add_connection(p)
    p.set_defaults(func=_cmd_health)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seedstream",
        description="seedstream: reproducible LLM generation over gRPC. Identical seeds, identical token streams.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'seedstream COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"seedstream {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(sub)
    _add_generate(sub)
    _add_tokenize(sub)
    _add_info(sub)
    _add_health(sub)
    return parser


# --------------------------------------------------------------------------- commands


def _cmd_serve(args) -> int:
    try:
        from seedstream.server.app import ServeOptions, serve
    except ImportError as exc:
        print(f"error: the server is not installed ({exc}); pip install 'seedstream[server]'", file=sys.stderr)
        return EXIT_ERROR
    opts = ServeOptions(
        model=args.model,
        host=args.host,
        port=args.port,
        http_port=int(args.http_port) if args.http_port is not None else None,
        device=args.device,
        dtype=args.dtype,
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        max_kv_tokens=int(args.max_kv_tokens) if args.max_kv_tokens is not None else None,
        max_new_tokens_limit=args.max_new_tokens_limit,
        default_max_new_tokens=args.default_max_new_tokens,
        prefill_chunk=int(args.prefill_chunk) if args.prefill_chunk is not None else None,
        max_step_tokens=int(args.max_step_tokens) if args.max_step_tokens is not None else None,
        threads=int(args.threads) if args.threads is not None else None,
        backend=args.backend,
        weights=args.weights,
        prefix_cache_mib=float(args.prefix_cache_mib) if args.prefix_cache_mib is not None else None,
        grace_period=args.grace_period,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        log_level=args.log_level,
        log_format=args.log_format,
        metrics_port=int(args.metrics_port) if args.metrics_port is not None else None,
        metrics_host=args.metrics_host,
        hardening=_hardening_options(args),
    )
    return serve(opts)


def _client(args):
    from .client import Client

    metadata = []
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --metadata expects KEY=VALUE, got {item!r}")
        metadata.append((key.strip().lower(), value))
    return Client(
        args.target,
        timeout=args.timeout,
        secure=args.tls,
        root_certificates=args.root_cert,
        certificate_chain=args.client_cert,
        private_key=args.client_key,
        metadata=metadata or None,
        api_key=_api_key(args),
    )


def _api_key(args) -> Optional[str]:
    """The key from --api-key-file (first non-empty line), else $SEEDSTREAM_API_KEY; never a flag value."""
    if getattr(args, "api_key_file", None):
        with open(args.api_key_file, encoding="utf-8") as fh:
            lines = [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]
        if not lines:
            raise SystemExit(f"error: {args.api_key_file} holds no API key")
        return lines[0].split()[-1]  # 'KEY' or 'NAME KEY', as in the server's key file
    return _env("SEEDSTREAM_API_KEY")


def _read_text(value: Optional[str]) -> Optional[str]:
    if value == "-":
        return sys.stdin.read()
    return value


def _input_kwargs(args, text_name: str) -> dict:
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
        messages = ([{"role": "system", "content": args.system}] if args.system is not None else [])
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


def _logit_bias(items) -> Optional[dict]:
    if not items:
        return None
    out = {}
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


def _summary(seed, finish, prompt_tokens, completion_tokens, receipt) -> str:
    line = f"[seed={seed} finish={finish} prompt_tokens={prompt_tokens} completion_tokens={completion_tokens}"
    if receipt is not None:
        line += f" receipt={receipt.digest[:16]}"
    return line + "]"


def _cmd_generate(args) -> int:
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
            print(_summary(last.seed, finish, last.prompt_tokens, last.completion_tokens, last.receipt), file=sys.stderr)
    return 0


def _cmd_tokenize(args) -> int:
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


def _cmd_info(args) -> int:
    with _client(args) as client:
        info = client.model_info()
    data = info.to_dict()
    if args.json:
        _write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    else:
        width = max(len(k) for k in data)
        _write("".join(f"{k:<{width}}  {v}\n" for k, v in data.items()))
    return 0


def _cmd_health(args) -> int:
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return args.func(args)
    from .errors import (
        DeadlineExceededError,
        InvalidArgumentError,
        OverloadedError,
        SeedstreamError,
        UnavailableError,
    )

    try:
        return args.func(args)
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
