"""Connection options and the server-side maximum deadline."""

from __future__ import annotations

import concurrent.futures
import logging

import pytest
from svc_helpers import idle, start_server, wait_for

from seedstream.client import Client, DeadlineExceededError

LONG = dict(prompt="Write a very long story about a dragon.", max_new_tokens=3000, ignore_eos=True, temperature=1.0)


@pytest.fixture(scope="module")
def short_deadline(loop_thread, engine):
    from seedstream.server.rpc.hardening import Security
    from seedstream.server.rpc.limits import ConnectionLimits
    from seedstream.server.service.inputs import RequestLimits

    security = Security(
        request_limits=RequestLimits(max_deadline=1.5),
        connection_limits=ConnectionLimits(max_streams_per_connection=4, max_connection_age=300),
    )
    srv = start_server(loop_thread, engine, security=security)
    yield srv
    loop_thread.run(srv.shutdown(0, stop_engine=False))


@pytest.mark.parametrize("kind", ["unary", "stream"])
def test_server_maximum_deadline_cuts_long_calls(short_deadline, engine, client, caplog, kind):
    """No client deadline (or a longer one): the server's --max-deadline ends the call and frees the slot."""
    caplog.set_level(logging.INFO, logger="seedstream")
    rid = f"max-deadline-{kind}"
    with Client(short_deadline.address, timeout=120) as capped:
        with pytest.raises(DeadlineExceededError, match="--max-deadline"):
            if kind == "unary":
                capped.generate(**LONG, request_id=rid)
            else:
                for _ in capped.generate_stream(**LONG, request_id=rid):
                    pass
        assert capped.model_info().max_deadline_seconds == 1.5
    assert wait_for(lambda: idle(engine), timeout=5.0), engine.load()  # the slot is freed
    assert client.generate("Hi", seed=1, max_new_tokens=2).completion_tokens >= 1
    lines = [r.getMessage() for r in caplog.records if f"id={rid}" in r.getMessage()]
    assert lines and lines[-1].endswith("status=DEADLINE_EXCEEDED"), lines


def test_connection_limits_become_grpc_options():
    from seedstream.server.rpc.limits import ConnectionLimits

    options = dict(
        ConnectionLimits(
            keepalive_time=30,
            keepalive_timeout=5,
            max_connection_idle=60,
            max_connection_age=600,
            max_streams_per_connection=16,
        ).grpc_options()
    )
    assert options["grpc.keepalive_time_ms"] == 30_000 and options["grpc.keepalive_timeout_ms"] == 5_000
    assert options["grpc.max_connection_idle_ms"] == 60_000 and options["grpc.max_connection_age_ms"] == 600_000
    assert options["grpc.max_concurrent_streams"] == 16
    assert "grpc.max_connection_age_ms" not in dict(ConnectionLimits().grpc_options())  # off by default


STREAM = dict(prompt="Four streams on one connection:", temperature=0.9, max_new_tokens=24, ignore_eos=True)
SEEDS = (61, 62, 63, 64)


def _streams_on_one_channel(loop_thread, engine, limit: int):
    """SEEDS streamed one at a time, then all at once on ONE channel to a server whose connections
    take `limit` concurrent calls; returns (solo tokens, concurrent tokens, the most seen at once).

    "At once" is read after every engine step, on the engine thread: the sequences running in the
    engine, and the calls the server has in flight. A step listener sees every step, so no stretch
    with more streams running escapes it (a scrape of the metrics gauge could miss one)."""
    from seedstream.server.rpc.hardening import Security
    from seedstream.server.rpc.limits import ConnectionLimits

    srv = start_server(
        loop_thread, engine, security=Security(connection_limits=ConnectionLimits(max_streams_per_connection=limit))
    )
    most = {"running": 0, "in_flight": 0}

    def on_step(seconds: float, rows: int) -> None:
        most["running"] = max(most["running"], engine.load()["running"])
        most["in_flight"] = max(most["in_flight"], srv.state.in_flight)

    try:
        with Client(srv.address, timeout=120) as client:

            def tokens(seed: int) -> list[int]:
                return [t for chunk in client.generate_stream(**STREAM, seed=seed) for t in chunk.token_ids]

            solo = [tokens(s) for s in SEEDS]
            assert wait_for(lambda: idle(engine), timeout=5.0), engine.load()
            engine.step_listeners.append(on_step)
            try:
                with concurrent.futures.ThreadPoolExecutor(len(SEEDS)) as pool:
                    together = list(pool.map(tokens, SEEDS))
            finally:
                engine.step_listeners.remove(on_step)
    finally:
        loop_thread.run(srv.shutdown(0, stop_engine=False))
    return solo, together, most


def test_max_streams_per_connection_holds_back_the_rest_of_one_channel(loop_thread, engine):
    """Limit 2, four streams on one channel: the server advertises SETTINGS_MAX_CONCURRENT_STREAMS = 2,
    so the client's transport keeps the other two waiting until a stream ends. Never more than 2
    run, all 4 finish, each with its solo tokens."""
    solo, together, most = _streams_on_one_channel(loop_thread, engine, limit=2)
    assert together == solo and all(len(t) == STREAM["max_new_tokens"] for t in solo)
    assert most == {"running": 2, "in_flight": 2}


def test_without_the_limit_the_same_streams_run_together(loop_thread, engine):
    """The control: with room for 4 calls per connection the same four streams do run at once, so
    the observation above would have seen a third or fourth stream had the limit let one through."""
    solo, together, most = _streams_on_one_channel(loop_thread, engine, limit=4)
    assert together == solo
    assert most == {"running": 4, "in_flight": 4}
