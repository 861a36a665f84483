"""Prometheus metrics and JSON request logs, scraped over HTTP after real gRPC calls.

Counters are per server (each owns its registry), so the deltas below are exactly
what this module's calls caused; the engine gauges and step times come from the
shared engine while this server is attached to it.
"""

from __future__ import annotations

import json
import logging
import urllib.request

import pytest
from svc_helpers import start_server, wait_for

from seedstream.client import Client
from seedstream.client.errors import InvalidArgumentError

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

PROMPT = [504, 3575, 282, 4649, 314]  # token ids: the prompt token count is known exactly


@pytest.fixture(scope="module")
def metered(loop_thread, engine):
    """A server with metrics on the shared engine, and the URL of its /metrics endpoint."""
    from seedstream.server.service.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    srv = start_server(loop_thread, engine, metrics=metrics)
    http = metrics.serve_http(0, "127.0.0.1")
    yield srv, f"http://127.0.0.1:{http.server_port}/metrics"
    http.shutdown()
    loop_thread.run(srv.shutdown(5.0, stop_engine=False))


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}, parsed from the Prometheus text format."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode("utf-8")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(after, before, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_counters_and_histograms_follow_real_calls(metered):
    srv, url = metered
    before = scrape(url)
    with Client(srv.address, timeout=120) as client:
        unary = client.generate(prompt_token_ids=PROMPT, seed=1, max_new_tokens=6, ignore_eos=True)
        streamed = list(client.generate_stream(prompt_token_ids=PROMPT, seed=2, max_new_tokens=4, ignore_eos=True))
        with pytest.raises(InvalidArgumentError):
            client.generate("hi", temperature=-1.0)
        client.score([([504, 3575], [282, 4649])])
    after = scrape(url)

    assert unary.completion_tokens == 6 and sum(len(c.token_ids) for c in streamed) == 4
    assert delta(after, before, "seedstream_requests_total", rpc="Generate", code="OK") == 1
    assert delta(after, before, "seedstream_requests_total", rpc="GenerateStream", code="OK") == 1
    assert delta(after, before, "seedstream_requests_total", rpc="Generate", code="INVALID_ARGUMENT") == 1
    assert delta(after, before, "seedstream_requests_total", rpc="Score", code="OK") == 1
    assert delta(after, before, "seedstream_prompt_tokens_total", rpc="Generate") == len(PROMPT)
    assert delta(after, before, "seedstream_prompt_tokens_total", rpc="GenerateStream") == len(PROMPT)
    assert delta(after, before, "seedstream_prompt_tokens_total", rpc="Score") == 4
    assert delta(after, before, "seedstream_completion_tokens_total", rpc="Generate") == 6
    assert delta(after, before, "seedstream_completion_tokens_total", rpc="GenerateStream") == 4
    # One first token per generation; every later token is one inter-token observation.
    assert delta(after, before, "seedstream_time_to_first_token_seconds_count", rpc="Generate") == 1
    assert delta(after, before, "seedstream_time_to_first_token_seconds_count", rpc="GenerateStream") == 1
    assert delta(after, before, "seedstream_inter_token_latency_seconds_count", rpc="Generate") == 5
    assert delta(after, before, "seedstream_inter_token_latency_seconds_count", rpc="GenerateStream") == 3
    # The failed request ends too: every request is in the end-to-end histogram.
    assert delta(after, before, "seedstream_request_duration_seconds_count", rpc="Generate") == 2
    assert delta(after, before, "seedstream_request_duration_seconds_bucket", rpc="Generate", le="+Inf") == 2
    # At least one engine step per generated token after the prefill.
    assert delta(after, before, "seedstream_engine_step_seconds_count") >= 6
    assert delta(after, before, "seedstream_engine_step_rows_sum") >= 6 + 4
    engine = srv.state.engine
    assert value(after, "seedstream_kv_positions_budget") == engine.config.max_kv_tokens
    assert value(after, "seedstream_max_batch_size") == engine.config.max_batch_size
    assert value(after, "seedstream_speculative_draft_tokens_total") == 0  # --speculative-tokens is off here
    stats = engine.prefix_cache.stats  # the prefix cache's gauges and counters are the engine's own figures
    assert value(after, "seedstream_prefix_cache_bytes") == stats.bytes
    assert value(after, "seedstream_prefix_cache_budget_bytes") == engine.prefix_cache.budget_bytes > 0
    assert value(after, "seedstream_prefix_cache_hit_tokens_total") == stats.hit_tokens
    assert value(after, "seedstream_prefix_cache_evicted_blocks_total") == stats.evicted_blocks
    # both generations' prompts and the scored one were looked up: every position a hit or a miss
    looked_up = delta(after, before, "seedstream_prefix_cache_hit_tokens_total") + delta(
        after, before, "seedstream_prefix_cache_miss_tokens_total"
    )
    assert looked_up >= 2 * len(PROMPT)


def test_gauges_while_a_stream_runs_and_cancelled_status(metered):
    srv, url = metered
    before = scrape(url)
    with Client(srv.address, timeout=120) as client:
        stream = client.generate_stream(prompt_token_ids=PROMPT, seed=3, max_new_tokens=400, ignore_eos=True)
        next(stream)
        during = scrape(url)
        stream.cancel()
        assert wait_for(
            lambda: (
                delta(scrape(url), before, "seedstream_requests_total", rpc="GenerateStream", code="CANCELLED") == 1
            ),
            timeout=30,
        )
    after = scrape(url)
    assert value(during, "seedstream_requests_in_flight") == 1
    assert value(during, "seedstream_running_sequences") == 1
    assert value(during, "seedstream_queue_depth") == 0
    # The prompt is in the cache; admission reserved prompt + max_new_tokens.
    assert len(PROMPT) <= value(during, "seedstream_kv_positions_used") < len(PROMPT) + 400
    assert value(during, "seedstream_kv_positions_reserved") == len(PROMPT) + 400
    assert wait_for(lambda: value(scrape(url), "seedstream_running_sequences") == 0, timeout=30)
    assert value(after, "seedstream_requests_in_flight") == 0
    assert value(scrape(url), "seedstream_kv_positions_used") == 0


def test_json_request_log_has_one_object_per_request(metered, caplog):
    from seedstream.server.logformat import JsonFormatter

    srv, _ = metered
    with caplog.at_level(logging.INFO, logger="seedstream.server"):
        with Client(srv.address, timeout=120) as client:
            client.generate(
                prompt_token_ids=PROMPT, seed=42, max_new_tokens=3, ignore_eos=True, request_id="req-json-1"
            )
    records = [r for r in caplog.records if getattr(r, "request", {}).get("request_id") == "req-json-1"]
    assert len(records) == 1
    entry = json.loads(JsonFormatter().format(records[0]))
    assert entry["rpc"] == "Generate" and entry["status"] == "OK" and entry["level"] == "INFO"
    assert entry["seed"] == 42 and entry["prompt_tokens"] == len(PROMPT) and entry["completion_tokens"] == 3
    assert entry["key_id"] == ""
    assert 0 <= entry["ttft_s"] <= entry["time_s"]
    assert "rpc=Generate id=req-json-1" in entry["message"]


def test_api_keys_name_the_request_and_refusals_are_counted(loop_thread, engine, caplog):
    """With API keys: the request record's key_id is the key's NAME (never the key), and calls the
    API-key interceptor refuses count as UNAUTHENTICATED."""
    from seedstream.client.errors import UnauthenticatedError
    from seedstream.server.rpc.hardening import Security
    from seedstream.server.service.metrics import ServiceMetrics

    key = "alice-key-0123456789abcdef"
    metrics = ServiceMetrics()
    srv = start_server(loop_thread, engine, metrics=metrics, security=Security(api_keys={key: "alice"}))
    try:
        with caplog.at_level(logging.INFO, logger="seedstream.server"):
            with Client(srv.address, timeout=60) as anonymous, Client(srv.address, api_key=key, timeout=60) as alice:
                for _ in range(2):
                    with pytest.raises(UnauthenticatedError):
                        anonymous.tokenize("Hello")
                alice.generate(prompt_token_ids=PROMPT, seed=1, max_new_tokens=1, request_id="req-key-1")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.render().decode())
            for s in family.samples
        }
    finally:
        loop_thread.run(srv.shutdown(5.0, stop_engine=False))
    assert value(samples, "seedstream_requests_total", rpc="Tokenize", code="UNAUTHENTICATED") == 2
    assert value(samples, "seedstream_requests_total", rpc="Generate", code="OK") == 1
    (record,) = [r for r in caplog.records if getattr(r, "request", {}).get("request_id") == "req-key-1"]
    assert record.request["key_id"] == "alice" and record.request["client"] == "alice"
    assert key not in json.dumps(record.request)
