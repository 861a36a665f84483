"""Prometheus metrics of one server: per-request counters and latencies, engine gauges and step times.

Both fronts (the gRPC servicer, the HTTP front) report each request once, when
it ends (`observe_request`); the gRPC side also reports each batch of tokens as it
arrives (`observe_first_token`, `observe_inter_token`); the engine reports its
step times through `Engine.step_listeners`; queue, batch and KV-cache gauges are
read from the engine when Prometheus scrapes. Each server owns its registry, so
several servers in one process (tests) never share counters.

    seedstream_requests_total{rpc,code}                   requests ended, by RPC and gRPC status code
                                                          (calls refused by the API-key check included;
                                                          HTTP routes as rpc "http.chat" with the HTTP status)
    seedstream_requests_ended_total{rpc,outcome}          the same ends as ok, error, cancel, deadline, dropped
    seedstream_prompt_tokens_total{rpc}                   prompt tokens of generations; tokens scored by Score*
                                                          (requests ended OK, CANCELLED or DEADLINE_EXCEEDED)
    seedstream_completion_tokens_total{rpc}               tokens generated
    seedstream_request_duration_seconds{rpc}              end-to-end latency (histogram)
    seedstream_time_to_first_token_seconds{rpc}           request start to its first generated token
    seedstream_inter_token_latency_seconds{rpc}           time per generated token after a sample's first
    seedstream_requests_in_flight                         requests being served now
    seedstream_queue_depth / seedstream_running_sequences sequences waiting for a slot / holding one
    seedstream_kv_positions_used / _reserved / _budget    KV-cache positions filled / admitted for / allowed
    seedstream_prefix_cache_bytes / _budget_bytes         prompt KV the prefix cache holds / may hold
    seedstream_prefix_cache_hit_tokens_total / _miss_     prompt positions copied from it / computed
      tokens_total, _evicted_blocks_total                 (hit rate = hits / (hits + misses)); blocks evicted
    seedstream_engine_step_seconds, _step_rows            one engine step's wall time and token rows
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.core import Metric

    from seedstream.server.engine.engine import Engine

# Seconds. Requests span milliseconds (Tokenize) to minutes (long completions on CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Which per-call log field counts as the RPC's prompt tokens (what the model had to compute).
PROMPT_TOKEN_FIELD = {
    "Generate": "prompt_tokens",
    "GenerateStream": "prompt_tokens",
    "Score": "tokens",
    "ScoreRolling": "tokens",
    "http.completions": "prompt_tokens",
    "http.chat": "prompt_tokens",
}


# Requests that end with these codes reached the engine; others (invalid, overloaded) computed nothing.
COMPUTED_CODES = frozenset({"OK", "CANCELLED", "DEADLINE_EXCEEDED", "DROPPED"})
# How a call ended, whatever its code: DROPPED is a stream whose client stopped reading (ended by the
# server at --max-deadline, or on HTTP after --http-stall-timeout); any other code is an error.
OUTCOMES = {"OK": "ok", "CANCELLED": "cancel", "DEADLINE_EXCEEDED": "deadline", "DROPPED": "dropped"}


class ServiceMetrics:
    """The metrics of one server, in their own registry."""

    def __init__(self, in_flight: Callable[[], int] = lambda: 0):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "seedstream_requests", "Requests ended, by RPC and gRPC status code", ["rpc", "code"], registry=r
        )
        self.prompt_tokens = Counter(
            "seedstream_prompt_tokens",
            "Prompt tokens of generations (once per request, whatever n) and tokens "
            "scored by Score/ScoreRolling, of requests that reached the engine",
            ["rpc"],
            registry=r,
        )
        self.ended = Counter(
            "seedstream_requests_ended",
            "Requests ended, by RPC and outcome: ok, error, cancel, deadline, dropped (a client that stopped reading)",
            ["rpc", "outcome"],
            registry=r,
        )
        self.completion_tokens = Counter("seedstream_completion_tokens", "Tokens generated", ["rpc"], registry=r)
        self.duration = Histogram(
            "seedstream_request_duration_seconds",
            "End-to-end request latency",
            ["rpc"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "seedstream_time_to_first_token_seconds",
            "From the request's arrival to its first generated token",
            ["rpc"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "seedstream_inter_token_latency_seconds",
            "Time per generated token after each sample's first token",
            ["rpc"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.step_seconds = Histogram(
            "seedstream_engine_step_seconds", "Wall time of one engine step", buckets=STEP_BUCKETS, registry=r
        )
        self.step_rows = Histogram(
            "seedstream_engine_step_rows",
            "Token rows (decode + prefill) in one engine step",
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("seedstream_requests_in_flight", "Requests being served now", registry=r)
        self.in_flight.set_function(in_flight)
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        r.register(_EngineGauges(self))

    # --- the engine

    def attach(self, engine: Engine) -> None:
        """Read `engine`'s gauges on scrape and time its steps (until detach)."""
        with self._lock:
            self.detach_locked()
            self._engine = engine
            engine.step_listeners.append(self._on_step)

    def detach(self) -> None:
        with self._lock:
            self.detach_locked()

    def detach_locked(self) -> None:
        if self._engine is not None and self._on_step in self._engine.step_listeners:
            self._engine.step_listeners.remove(self._on_step)
        self._engine = None

    def _on_step(self, seconds: float, rows: int) -> None:
        self.step_seconds.observe(seconds)
        self.step_rows.observe(rows)

    # --- requests (called by the servicer on the event loop)

    def observe_first_token(self, rpc: str, seconds: float) -> None:
        self.ttft.labels(rpc).observe(seconds)

    def observe_inter_token(self, rpc: str, seconds_per_token: float, tokens: int) -> None:
        child = self.inter_token.labels(rpc)
        for _ in range(tokens):
            child.observe(seconds_per_token)

    def observe_request(
        self, rpc: str, code: str, seconds: float, fields: dict[str, Any], outcome: str | None = None
    ) -> None:
        """One ended request: its status code (a grpc.StatusCode name), latency and token counts;
        `outcome` where the code alone does not say it (a stream dropped at its deadline)."""
        self.requests.labels(rpc, code).inc()
        self.ended.labels(rpc, outcome or OUTCOMES.get(code, "error")).inc()
        self.duration.labels(rpc).observe(seconds)
        prompt = fields.get(PROMPT_TOKEN_FIELD.get(rpc, ""), 0)
        if prompt and code in COMPUTED_CODES:
            self.prompt_tokens.labels(rpc).inc(prompt)
        completion = fields.get("completion_tokens", 0)
        if completion:
            self.completion_tokens.labels(rpc).inc(completion)

    def observe_rejected(self, rpc: str, code: str) -> None:
        """A call an interceptor refused before any handler ran (e.g. UNAUTHENTICATED): counted only."""
        self.requests.labels(rpc, code).inc()
        self.ended.labels(rpc, OUTCOMES.get(code, "error")).inc()

    # --- exposition

    def render(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)

    def serve_http(self, port: int, host: str = "127.0.0.1") -> WSGIServer:
        """Serve /metrics on host:port from a daemon thread; returns the HTTP server (`.server_port`)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server


class _EngineGauges:
    """Queue, batch and KV gauges read from the attached engine at scrape time (none while loading)."""

    def __init__(self, metrics: ServiceMetrics):
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        engine = self.metrics._engine
        if engine is None:
            return
        load = engine.load()
        kv = engine.kv_usage()
        yield _gauge("seedstream_queue_depth", "Sequences waiting for a batch slot", load["waiting"])
        yield _gauge("seedstream_running_sequences", "Sequences holding a batch slot", load["running"])
        yield _gauge("seedstream_max_batch_size", "Batch slots (--max-batch-size)", engine.config.max_batch_size)
        yield _gauge("seedstream_max_queue", "Queue capacity (--max-queue)", engine.config.max_queue)
        yield _gauge("seedstream_kv_positions_used", "KV-cache positions filled by running sequences", kv["used"])
        yield _gauge(
            "seedstream_kv_positions_reserved",
            "KV-cache positions admission reserved for running sequences (prompt + max_new_tokens)",
            kv["reserved"],
        )
        yield _gauge("seedstream_kv_positions_budget", "KV-cache admission budget (--max-kv-tokens)", kv["budget"])
        yield from _prefix_cache_metrics(engine)
        spec = engine.speculation()
        yield _counter("seedstream_speculative_draft_tokens", "Tokens drafted by speculative decoding", spec.drafted)
        yield _counter(
            "seedstream_speculative_accepted_tokens",
            "Drafted tokens kept (the seeded sampler drew exactly them)",
            spec.accepted,
        )


def _prefix_cache_metrics(engine: Engine) -> Iterator[Metric]:
    cache = engine.prefix_cache
    stats = cache.stats
    yield _gauge("seedstream_prefix_cache_bytes", "Prompt KV held by the prefix cache, bytes", stats.bytes)
    yield _gauge("seedstream_prefix_cache_budget_bytes", "Prefix cache budget (--prefix-cache-mib)", cache.budget_bytes)
    yield _counter(
        "seedstream_prefix_cache_hit_tokens", "Prompt positions copied from the prefix cache", stats.hit_tokens
    )
    yield _counter(
        "seedstream_prefix_cache_miss_tokens", "Prompt positions computed (not in the cache)", stats.miss_tokens
    )
    yield _counter("seedstream_prefix_cache_evicted_blocks", "Prefix cache blocks evicted (LRU)", stats.evicted_blocks)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
