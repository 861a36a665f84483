"""The server's settings, each defined once: its type, default, help text, flag and environment variable.

`EngineConfig` (what the engine takes) and `ServeOptions` (what `seedstream serve`
adds around it) are dataclasses whose fields carry a `Setting` in their metadata.
From those fields alone come the command line's flags and environment lookup
(`seedstream.server.cli`) and the configuration table in docs/configuration.md
(`markdown_table()`; a test keeps the two equal).

A field `max_queue` is the flag `--max-queue` and the environment variable
`SEEDSTREAM_MAX_QUEUE` (the flag's name, upper-cased), unless its `Setting`
names another flag. Help texts are Markdown: `--help` shows them without backticks.

Stdlib only (and the contract's constants, themselves stdlib), so `seedstream serve --help` needs
neither torch nor grpc.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator
from typing import Any

from seedstream.v1.protocol import DEFAULT_PORT

ENV_PREFIX = "SEEDSTREAM_"
DTYPE_NAMES = ("float32", "bfloat16", "float16")
BACKENDS = ("auto", "kernels", "torch")
WEIGHT_FORMATS = ("auto", "f32", "q8_0", "q4_1")
KV_CACHE_DTYPES = ("auto", "float32", "bfloat16")
ACTIVATIONS = ("float32", "int8")
MAX_SPECULATIVE_TOKENS = 16
# Owned here, because --help quotes them and this module imports neither torch nor grpc; the engine and the
# service import them from here.
NGRAM_MAX = 3  # speculation: longest tail looked up (engine/speculation.py)
NGRAM_MIN = 2  # shortest: a single token repeats too often by chance to be worth its rows
MAX_SPECULATING_SEQUENCES = 4  # more decoding sequences than this: no drafts (the step is no longer memory-bound)
RESERVED_SLOTS_SHARE = 16  # --reserved-slots unset: max_batch_size // this (engine/scheduler.py)
CHARS_PER_CONTEXT_TOKEN = 32  # --max-input-chars unset: this x max_context
TOKENS_PER_CONTEXT = 16  # --max-input-tokens unset: this x max_context
CONNECTION_AGE_GRACE_S = 30.0  # time calls get to finish after --max-connection-age (rpc/limits.py)
# The default model's KV bytes per position in float32: keys and values x 30 layers x 3 KV heads x 64 dims x 4.
DEFAULT_MODEL_KV_BYTES = 2 * 30 * 3 * 64 * 4
_MAX_BATCH_SIZE, _MAX_KV_TOKENS, _HTTP_MAX_BODY_BYTES = 64, 262144, 4 * 2**20
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a settings field says about itself beyond its type and default."""

    help: str  # Markdown
    flag: str | None = None  # None: "--" + the field's name with dashes
    choices: tuple[str, ...] | None = None
    metavar: str | None = None  # None: the flag's name, upper-cased
    parse: Callable[[str], Any] | None = None  # None: the field's type
    shown: str | None = None  # the default as the docs say it (for None: what unset means)
    group: str = "engine"


def setting(default: Any, help: str, **options: Any) -> Any:
    """A dataclass field with its default and a `Setting` (see `Setting` for the options)."""
    return dataclasses.field(default=default, metadata={"setting": Setting(help, **options)})


# --------------------------------------------------------------------------- the settings


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """The engine's settings. Scheduling settings never change a token, so they are not part of the
    determinism contract (nor of engine_version); dtype, backend and weights are."""

    model: str | None = setting(
        None,
        "a transformers model folder (safetensors or .bin, sharded or not), a `.gguf` file, a folder holding one "
        "`.gguf`, or a Hugging Face hub id (`org/name`, or `org/name/file.gguf`) found in the local HF cache "
        "(`HF_HOME`) or downloaded unless `HF_HUB_OFFLINE=1`",
        shown="embedded SmolLM2-135M-Instruct",
    )
    device: str = setting("auto", "`auto` (cuda when available, else cpu), `cpu`, `cuda` or `cuda:N`")
    dtype: str = setting("float32", "compute dtype; part of the reproducibility promise", choices=DTYPE_NAMES)
    max_batch_size: int = setting(_MAX_BATCH_SIZE, "most sequences decoding at once")
    max_queue: int = setting(256, "most requests waiting for a slot; beyond it `RESOURCE_EXHAUSTED`")
    # Without preemption, a bounded wait for a newcomer needs room kept free before it arrives.
    reserved_slots: int | None = setting(
        None,
        "batch slots, and the same share of `--max-kv-tokens`, that a client already running sequences may not "
        "take: kept for clients with nothing running, so while one client fills the batch (e.g. `n=64`) another "
        "client's request is admitted at the next step; scheduling only, it changes no token",
        shown=f"`--max-batch-size` / {RESERVED_SLOTS_SHARE} ({_MAX_BATCH_SIZE // RESERVED_SLOTS_SHARE} of {_MAX_BATCH_SIZE})",
    )
    max_queue_per_client: int | None = setting(
        None,
        "most waiting requests from one client (API key name, else peer address); waiting requests "
        "are admitted round-robin over clients",
        shown="`--max-queue`",
        group="security and limits",
    )
    # Each running sequence counts at its most, so admission never has to preempt.
    max_kv_tokens: int = setting(
        _MAX_KV_TOKENS,
        "KV-cache budget in token positions over all running sequences, each counted as prompt + "
        "`max_new_tokens` (capped at the context); a request beyond it waits in the queue instead of risking "
        f"the server's memory (about {DEFAULT_MODEL_KV_BYTES // 1024} KiB per position for the default model in "
        f"fp32, so {DEFAULT_MODEL_KV_BYTES * _MAX_KV_TOKENS // 2**30} GiB at most; half that with "
        "`--kv-cache-dtype bfloat16`); one request is always admitted",
    )
    prefill_chunk: int = setting(
        256, "prompt tokens per prefill chunk; a tuning knob: prefill equals decode bit for bit, so it changes no token"
    )
    max_step_tokens: int = setting(512, "token rows per engine step; at least `--prefill-chunk`")
    max_new_tokens_limit: int = setting(4096, "largest `max_new_tokens` a request may ask for")
    # Not in engine_version: the cache changes no token.
    prefix_cache_mib: float = setting(
        1024.0,
        "prefix cache budget in MiB (0 = off): prompt KV kept in blocks, reused exactly, LRU-evicted; "
        f"changes no token (about {DEFAULT_MODEL_KV_BYTES // 1024} KiB per position for the default model in fp32, "
        "half with `--kv-cache-dtype bfloat16`)",
    )
    # Not in engine_version: speculation changes no token.
    speculative_tokens: int = setting(
        0,
        f"exact speculative decoding (0 = off, allowed 0..{MAX_SPECULATIVE_TOKENS}): each step, a decoding sequence "
        f"drafts up to this many tokens from an earlier occurrence of its last {NGRAM_MIN}-{NGRAM_MAX} tokens "
        "(prompt lookup) and keeps them while its seeded sampler draws exactly them, so tokens, logprobs and "
        "receipts are those of decoding one token per step; pays on text that repeats its prompt or itself (code "
        f"edits, extraction, summaries) while at most {MAX_SPECULATING_SEQUENCES} sequences decode, costs a few "
        "percent on text that does not",
    )
    num_threads: int | None = setting(
        None, "threads of the kernels and of torch's intra-op pool", flag="--threads", shown="torch's default"
    )
    backend: str = setting(
        "auto",
        "forward pass: `kernels` = seedstream's C++ CPU kernels (built with the system C++ compiler on "
        "first start, cached; the same bits for any batch, prefill chunk, thread count and x86 CPU), `torch` = "
        "the torch path (CUDA, bfloat16/float16, or no compiler), `auto` = kernels on CPU float32 when they "
        "build, else torch (with a warning); part of `engine_version`",
        choices=BACKENDS,
    )
    weights: str = setting(
        "auto",
        "weight format of the kernels: `auto` = as stored (a GGUF's types, e.g. `q4_1` or `q4_k,q6_k`; a bfloat16 "
        "or float16 safetensors folder's `bf16` or `f16`, multiplied at 16 bits; else `f32`), or a conversion: "
        f"{', '.join(f'`{w}`' for w in WEIGHT_FORMATS[1:])} (a GGUF's stored blocks are kept when at least as "
        "precise, else quantised on load; a folder's matrices are all converted); in "
        "`engine_version`, the receipt and `GetModelInfo` as `weight_format`",
        choices=WEIGHT_FORMATS,
    )
    kv_cache_dtype: str = setting(
        "auto",
        "element type of cached keys and values: `auto` = the compute dtype, or `bfloat16` (each key and value "
        "rounded to nearest even: half the bytes per position, so twice the positions per GiB and faster "
        "attention on long or many sequences, at about 0.3 in the largest logit difference); still the same "
        "bits for any batch or schedule; in `engine_version` (`.kvbf16`)",
        choices=KV_CACHE_DTYPES,
    )
    activations: str = setting(
        "float32",
        "what the kernels multiply quantised weights with: `float32`, or `int8` (for q8_0, q4_0, q4_1, q5_0, "
        "q5_1, q4_k, q5_k and q6_k weights; other formats are refused at start; each 32-value block of a "
        "GEMM input rounded to int8 with its own scale, as llama.cpp does, then integer dot products: decode "
        "steps about 1.5-2x faster at 8 or more streams; logits move by up to about 2 from float32's, greedy "
        "agreement about 95 %, perplexity unchanged); still the same bits for any batch, schedule, thread count "
        "and x86 CPU; in `engine_version` (`.a8`)",
        choices=ACTIVATIONS,
    )

    def __post_init__(self) -> None:
        check_choices(self)
        for name in (
            "max_batch_size",
            "max_queue",
            "max_kv_tokens",
            "prefill_chunk",
            "max_step_tokens",
            "max_new_tokens_limit",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.reserved_slots is not None and not 0 <= self.reserved_slots < self.max_batch_size:
            raise ValueError(f"reserved_slots={self.reserved_slots}: allowed [0, max_batch_size)")
        if self.max_queue_per_client is not None and self.max_queue_per_client < 1:
            raise ValueError(f"max_queue_per_client={self.max_queue_per_client}: must be >= 1")
        if self.activations == "int8" and (self.backend == "torch" or self.weights == "f32"):
            raise ValueError("activations='int8' needs the kernels with quantised weights (backend and weights)")
        if self.backend == "torch" and self.weights not in ("auto", "f32"):
            raise ValueError(
                f"weights={self.weights!r} needs backend=kernels (the torch path computes in {self.dtype})"
            )
        if not 0 <= self.speculative_tokens <= MAX_SPECULATIVE_TOKENS:
            raise ValueError(
                f"speculative_tokens={self.speculative_tokens}: allowed 0..{MAX_SPECULATIVE_TOKENS} (0 = off)"
            )
        if not self.prefix_cache_mib >= 0:
            raise ValueError(f"prefix_cache_mib={self.prefix_cache_mib}: must be >= 0 (0 turns the cache off)")
        if self.max_step_tokens < self.prefill_chunk:
            raise ValueError(f"max_step_tokens={self.max_step_tokens}: must be >= prefill_chunk={self.prefill_chunk}")


def check_choices(settings: Any) -> None:
    """Each field whose `Setting` has choices holds one of them (ValueError naming the field if not)."""
    for field in dataclasses.fields(settings):
        info = field.metadata.get("setting")
        value = getattr(settings, field.name)
        if info is not None and info.choices is not None and value not in info.choices:
            raise ValueError(f"{field.name}={value!r}: allowed {', '.join(info.choices)}")


def _server(default: Any, help: str, **options: Any) -> Any:
    return setting(default, help, group="server", **options)


def _security(default: Any, help: str, **options: Any) -> Any:
    return setting(default, help, group="security and limits", **options)


def _observability(default: Any, help: str, **options: Any) -> Any:
    return setting(default, help, group="observability", **options)


@dataclasses.dataclass
class ServeOptions:
    """Everything `seedstream serve` takes: the engine's settings and the server's own."""

    # EngineConfig's fields as given; EngineConfig checks them when the server starts.
    engine: dict[str, Any] = dataclasses.field(default_factory=dict)

    host: str = _server("127.0.0.1", "listen address; `0.0.0.0` for every interface")
    port: int = _server(DEFAULT_PORT, "TCP port; 0 picks a free one (logged)")
    http_port: int | None = _server(
        None,
        "also serve the OpenAI-compatible HTTP API and the playground page on this port (same host; plain "
        "HTTP, or HTTPS with `--http-tls-cert`); 0 picks a free one (logged)",
        shown="off",
    )
    http_tls_cert: str | None = _server(
        None, "PEM certificate chain file: serve the HTTP front (`--http-port`) as HTTPS", shown="none"
    )
    http_tls_key: str | None = _server(None, "PEM private key file for `--http-tls-cert`", shown="none")
    default_max_new_tokens: int = _server(256, "`max_new_tokens` when a request leaves it unset")
    grace_period: float = _server(30.0, "seconds in-flight requests get to finish on SIGTERM/SIGINT")
    tls_cert: str | None = _server(None, "PEM certificate chain file: serve TLS instead of plaintext", shown="none")
    tls_key: str | None = _server(None, "PEM private key file for `--tls-cert`", shown="none")
    log_level: str = _server(
        "INFO", "log verbosity; INFO logs one line per request", choices=LOG_LEVELS, parse=str.upper
    )

    # Authentication, client certificates, reflection, connection and request limits (rpc/hardening.py);
    # rpc/limits.py takes its defaults from here.
    api_key_file: str | None = _security(
        None,
        "require API keys: a file with one `KEY` or `NAME KEY` per line (`#` comments); clients send "
        "`authorization: Bearer KEY`. Keys may also come from `SEEDSTREAM_API_KEYS` (comma-separated "
        "entries), never from a flag",
        metavar="PATH",
        shown="none",
    )
    tls_client_ca: str | None = _security(
        None,
        "require client certificates signed by this CA (mutual TLS; needs `--tls-cert`)",
        metavar="PEM",
        shown="none",
    )
    receipt_signing_key: str | None = _security(
        None,
        "sign every receipt with this Ed25519 private key (PEM, PKCS#8, unencrypted): the signature binds the "
        "receipt's digest to the output's token ids (and scores); `GetModelInfo` publishes the public key and "
        "`seedstream verify --public-key` checks transcripts offline. Off by default",
        metavar="PEM",
        shown="none",
    )
    reflection: bool = _security(
        True, "do not serve gRPC server reflection", flag="--no-reflection", shown="reflection on"
    )
    insecure: bool = _security(
        False,
        "accept plaintext without API keys on a non-loopback address where `SEEDSTREAM_REFUSE_INSECURE=1` "
        "(the Docker image) refuses it; elsewhere that only logs a warning",
        shown="off",
    )
    max_input_chars: int | None = _security(
        None,
        "most text characters in one request, checked before tokenizing",
        shown=f"{CHARS_PER_CONTEXT_TOKEN} × context",
    )
    max_input_tokens: int | None = _security(
        None, "most tokens in one Score, ScoreRolling or Tokenize request", shown=f"{TOKENS_PER_CONTEXT} × context"
    )
    max_deadline: float = _security(600.0, "seconds any call may run, whatever the client's deadline; 0 = no limit")
    keepalive_time: float = _security(60.0, "seconds between keepalive pings on an idle connection")
    keepalive_timeout: float = _security(20.0, "seconds to wait for a ping's answer before closing")
    max_connection_idle: float = _security(300.0, "close connections without calls after this many seconds; 0 = never")
    max_connection_age: float | None = _security(
        None,
        f"gracefully close connections older than this many seconds ({CONNECTION_AGE_GRACE_S:g} s grace; spreads "
        "clients over replicas)",
        shown="never",
    )
    max_streams_per_connection: int = _security(128, "most concurrent calls on one HTTP/2 connection")
    http_max_connections: int = _security(
        512, "most open connections to the HTTP front; more are answered 503 and closed at once"
    )
    http_max_connections_per_client: int = _security(
        64, "most open HTTP connections from one client address (behind a proxy: the proxy's)"
    )
    http_header_timeout: float = _security(
        10.0, "seconds an HTTP client may take to send a request's headers (and TLS handshake); then it is closed"
    )
    http_body_timeout: float = _security(30.0, "seconds an HTTP client may take to send a request's body; then 408")
    http_max_body_bytes: int = _security(
        _HTTP_MAX_BODY_BYTES,
        "largest HTTP request body in bytes; beyond it 413",
        shown=f"{_HTTP_MAX_BODY_BYTES // 2**20} MiB",
    )
    http_stall_timeout: float = _security(
        30.0, "an HTTP event stream whose client has read nothing for this many seconds is dropped (logged, counted)"
    )

    metrics_port: int | None = _observability(
        None, "serve Prometheus metrics at `http://HOST:PORT/metrics`; 0 picks a free port (logged)", shown="off"
    )
    metrics_host: str | None = _observability(None, "listen address of the metrics endpoint", shown="`--host`")
    log_format: str = _observability(
        "text",
        "`text`, or `json`: one JSON object per log line; a request's line carries request_id, key_id, seed, "
        "token counts, ttft_s, time_s and status",
        choices=LOG_FORMATS,
    )

    def __post_init__(self) -> None:
        check_choices(self)


# --------------------------------------------------------------------------- reading the settings


GROUPS = ("server", "engine", "security and limits", "observability")  # order in --help and the docs


@dataclasses.dataclass(frozen=True)
class Flag:
    """One setting as the command line and the docs see it."""

    owner: type  # EngineConfig or ServeOptions
    name: str  # the field's name
    flag: str
    env: str
    type: type  # int, float, str or bool
    default: Any
    setting: Setting

    @property
    def parse(self) -> Callable[[str], Any]:
        return self.setting.parse or self.type

    @property
    def metavar(self) -> str:
        return self.setting.metavar or self.flag[2:].upper().replace("-", "_")


def _value_type(hint: Any) -> type:
    """int for `int` and `Optional[int]`, and so on."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    value_type: type = args[0] if args else hint
    return value_type


def flags_of(cls: type) -> Iterator[Flag]:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if "setting" not in field.metadata:
            continue
        info: Setting = field.metadata["setting"]
        flag = info.flag or "--" + field.name.replace("_", "-")
        yield Flag(
            cls,
            field.name,
            flag,
            ENV_PREFIX + flag[2:].upper().replace("-", "_"),
            _value_type(hints[field.name]),
            field.default,
            info,
        )


def all_flags() -> list[Flag]:
    """Every setting of `seedstream serve`, in the order of GROUPS."""
    found = [*flags_of(ServeOptions), *flags_of(EngineConfig)]
    return sorted(found, key=lambda f: GROUPS.index(f.setting.group))  # stable: field order within a group


def shown_default(flag: Flag) -> str:
    """The default as the docs say it: Markdown."""
    if flag.setting.shown is not None:
        return flag.setting.shown
    if isinstance(flag.default, str):
        return f"`{flag.default}`"
    if isinstance(flag.default, float):
        return f"{flag.default:g}"
    return str(flag.default)


def markdown_table() -> str:
    """The configuration table of docs/configuration.md."""
    rows = ["| flag | env | default | meaning |", "|---|---|---|---|"]
    for f in all_flags():
        env = f"{f.env}=1" if f.type is bool else f.env
        meaning, choices = f.setting.help, f.setting.choices or ()
        if not all(f"`{c}`" in meaning for c in choices):  # --help lists them in the flag's usage
            meaning += "; one of " + ", ".join(f"`{c}`" for c in choices)
        rows.append(f"| `{f.flag}` | `{env}` | {shown_default(f)} | {meaning} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
