"""The HTTP connection gate at its overall cap: slow connections from many addresses, each under the
per-address cap, cannot shut other clients out. A newcomer evicts the connection that has waited longest
for its request headers; it is refused (503) only when every open connection is past its headers."""

from __future__ import annotations

import pytest
from http_helpers import start, wait_for
from test_hostile_http import CANARY_HOST, _headers, _read_all, canary, closed_by_server, connect

LIMITS = dict(
    max_connections=20,
    max_connections_per_client=8,
    header_timeout=60.0,  # longer than any test here: only eviction can close a slow connection
    body_timeout=60.0,
    max_body_bytes=2**20,
    stall_timeout=30.0,
)
SLOW_HOSTS = [f"127.0.0.{i}" for i in range(3, 8)]  # 5 addresses x 4 = the overall cap, each under 8


@pytest.fixture(scope="module")
def gated(http_loop, engine):
    from seedstream.server.http.gate import HttpLimits

    srv = start(http_loop, engine, http_limits=HttpLimits(**LIMITS))
    yield srv
    http_loop.run(srv.shutdown(5.0, stop_engine=False))


def fill(server, send: bytes) -> list:
    """Connections from SLOW_HOSTS, each sending `send`, until the overall cap is full (oldest first)."""
    socks = []
    for i in range(LIMITS["max_connections"]):
        s = connect(server, SLOW_HOSTS[i % len(SLOW_HOSTS)])
        s.sendall(send)
        socks.append(s)
    assert wait_for(lambda: server.http.gate.open == LIMITS["max_connections"], 10)
    return socks


def test_slow_headers_from_many_addresses_are_evicted_for_a_newcomer(gated):
    gate = gated.http.gate
    evicted_before = gate.evicted
    socks = fill(gated, b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers that never end
    try:
        canary(gated)  # another address is served: it evicted the slow connection that had waited longest
        assert gate.evicted - evicted_before == 1 and closed_by_server(socks[0], 10.0)
        # The canary has gone, leaving a place: one more slow connection fills it, and the next canary
        # evicts the next-oldest; the newest ones stay open.
        socks.append(connect(gated, SLOW_HOSTS[0]))
        socks[-1].sendall(b"GET /health HTTP/1.1\r\n")
        assert wait_for(lambda: gate.open == LIMITS["max_connections"], 10)
        canary(gated)
        assert gate.evicted - evicted_before == 2 and closed_by_server(socks[1], 10.0)
        assert not closed_by_server(socks[-1], 0.5)
        assert wait_for(lambda: gate.open == LIMITS["max_connections"] - 1, 10)
    finally:
        for s in socks:
            s.close()
    assert wait_for(lambda: gate.open == 0, 10)


def test_a_newcomer_is_refused_only_when_every_connection_is_being_served(gated):
    gate = gated.http.gate
    head = {"Host": "x", "Content-Type": "application/json", "Content-Length": "1000"}
    # Complete headers, a body that has not arrived: every connection is past its headers.
    socks = fill(gated, b"POST /v1/completions HTTP/1.1\r\n" + _headers(head) + b'{"prompt": "')
    try:
        evicted_before = gate.evicted
        with connect(gated, CANARY_HOST) as newcomer:
            assert _read_all(newcomer).startswith(b"HTTP/1.1 503")
        assert gate.evicted == evicted_before
    finally:
        for s in socks:
            s.close()
    assert wait_for(lambda: gate.open == 0, 10)
    canary(gated)
