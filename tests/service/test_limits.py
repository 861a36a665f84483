"""Connection options and the server-side maximum deadline."""

from __future__ import annotations

import logging

import pytest
from svc_helpers import idle, start_server, wait_for

from seedstream.client import Client, DeadlineExceededError

LONG = dict(prompt="Write a very long story about a dragon.", max_new_tokens=3000, ignore_eos=True, temperature=1.0)


@pytest.fixture(scope="module")
def short_deadline(loop_thread, engine):
    from seedstream.server.rpc.hardening import Security
    from seedstream.server.rpc.limits import ConnectionLimits, RequestLimits

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
