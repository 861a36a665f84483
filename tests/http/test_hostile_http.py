"""Hostile HTTP clients against a real server on loopback: trickled and half-open connections, bodies that
never end, oversized and malformed bodies, list and message floods, wrong content types and event streams
nobody reads. Each checks the status a client gets, that a canary from another address still answers, and
(where memory is the risk) that the process's RSS stays within a bound. Time bounds have wide margins."""

from __future__ import annotations

import json
import socket

import pytest
from http_helpers import start, wait_for

CANARY_HOST = "127.0.0.2"  # another client address on loopback (Linux routes all of 127/8 there)
LIMITS = dict(
    max_connections=48,
    max_connections_per_client=16,
    header_timeout=1.0,
    body_timeout=1.0,
    max_body_bytes=2**20,
    stall_timeout=1.5,
)


@pytest.fixture(scope="module")
def hostile(http_loop, engine):
    from seedstream.server.http.gate import HttpLimits
    from seedstream.server.service.metrics import ServiceMetrics

    srv = start(http_loop, engine, http_limits=HttpLimits(**LIMITS), metrics=ServiceMetrics())
    yield srv
    http_loop.run(srv.shutdown(5.0, stop_engine=False))


def connect(server, source: str = "127.0.0.1", rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((source, 0))
    s.settimeout(30)
    s.connect(("127.0.0.1", server.http.port))
    return s


def request(server, method: str, path: str, body: bytes = b"", headers: dict | None = None, source="127.0.0.1"):
    """One raw HTTP/1.1 exchange: (status, parsed JSON body or raw bytes)."""
    head = {"Host": "x", "Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    with connect(server, source) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\n".encode() + _headers(head) + body)
        data = _read_all(s)
    status = int(data.split(b" ", 2)[1])
    payload = data.split(b"\r\n\r\n", 1)[1]
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload


def post(server, path: str, body, content_type: str = "application/json", source="127.0.0.1"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(server, "POST", path, raw, {"Content-Type": content_type}, source)


def canary(server) -> None:
    """Another client address gets a completion."""
    status, body = post(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 2, "seed": 1}, source=CANARY_HOST)
    assert status == 200, body
    assert body["usage"]["completion_tokens"] == 2


def _headers(head: dict) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode() + b"\r\n"


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def closed_by_server(s: socket.socket, timeout: float) -> bool:
    """True if the server closes `s` (EOF or reset) within `timeout` s; what it sent first is ignored."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# --- connections


def test_trickled_and_half_open_connections_are_capped_and_closed(hostile):
    # Twice the per-client cap: half are refused at once, the rest closed at the header deadline.
    socks = [connect(hostile) for _ in range(2 * LIMITS["max_connections_per_client"])]
    try:
        for i, s in enumerate(socks):
            if i % 2:
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # trickles, never ends its headers
        canary(hostile)  # another address is served meanwhile
        closed = [closed_by_server(s, 20.0) for s in socks]  # deadline 1 s: a wide margin
        assert all(closed), f"{closed.count(False)} connections still open"
    finally:
        for s in socks:
            s.close()
    assert hostile.http.gate.refused >= LIMITS["max_connections_per_client"]
    assert hostile.http.gate.timed_out >= 1
    assert wait_for(lambda: hostile.http.gate.open == 0, 10)
    canary(hostile)


def test_refused_connection_gets_503(hostile):
    socks = [connect(hostile) for _ in range(LIMITS["max_connections_per_client"])]
    try:
        assert wait_for(lambda: hostile.http.gate.open >= LIMITS["max_connections_per_client"], 10)
        with connect(hostile) as extra:  # answered at once, before it sends anything
            assert _read_all(extra).startswith(b"HTTP/1.1 503")
        canary(hostile)
    finally:
        for s in socks:
            s.close()


def test_a_body_that_never_ends_gets_408(hostile):
    with connect(hostile) as s:
        head = {"Host": "x", "Content-Type": "application/json", "Content-Length": "1000"}
        s.sendall(b"POST /v1/completions HTTP/1.1\r\n" + _headers(head) + b'{"prompt": "')
        data = _read_all(s)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"


# --- bodies


def test_oversized_bodies_get_413(hostile):
    big = b'{"prompt": "' + b"a" * (LIMITS["max_body_bytes"] + 10) + b'"}'
    status, body = post(hostile, "/v1/completions", big)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    with connect(hostile) as s:  # chunked: no Content-Length to refuse up front
        head = {"Host": "x", "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        s.sendall(b"POST /v1/completions HTTP/1.1\r\n" + _headers(head))
        chunk = b"a" * 65536
        try:
            for _ in range(40):
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: read what it said
        assert _read_all(s).startswith(b"HTTP/1.1 413")
    canary(hostile)


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", b'{"prompt": "a\\ud800b", "max_tokens": 1}', "prompt"),
        ("/v1/completions", b'{"prompt": ["ok", "\\udfff"], "max_tokens": 1}', "prompt[1]"),
        ("/v1/completions", b'{"prompt": "hi", "stop": ["\\ud800"]}', "stop"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"),
        ("/v1/completions", b'{"prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}", "max_tokens"),
        ("/v1/completions", b'{"prompt": "hi", "seed": ' + b"1" * 50 + b"}", "seed"),
        ("/v1/completions", b'{"prompt": "hi", "temperature": ' + b"1" * 5000 + b"}", "temperature"),
        ("/v1/completions", b'{"prompt": [1, ' + b"2" * 5000 + b"]}", "prompt"),
        ("/v1/completions", b'{"prompt": "hi", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}", "body"),
        ("/v1/completions", b'{"prompt": {"text": "hi"}}', "prompt"),
        ("/v1/completions", b'{"prompt": "hi", "stop": 5}', "stop"),
        ("/v1/completions", b'{"prompt": "hi", "n": "2"}', "n"),
        ("/v1/completions", b'{"prompt": "hi", "logit_bias": [1]}', "logit_bias"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        ("/v1/chat/completions", b'{"messages": "hi"}', "messages"),
        ("/v1/completions", b"[1, 2]", "body"),
        ("/v1/completions", b'{"prompt": "hi"', "body"),
        ("/v1/completions", b'{"prompt": "\xff"}', "body"),
    ],
)
def test_malformed_input_gets_400_naming_the_field(hostile, path, body, param):
    status, reply = post(hostile, path, body)
    assert status == 400, reply
    assert reply["error"]["param"] == param, reply


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_only_json_bodies_are_accepted(hostile, content_type):
    status, reply = post(hostile, "/v1/completions", {"prompt": "hi", "max_tokens": 1}, content_type=content_type)
    assert status == 415 and reply["error"]["code"] == "unsupported_media_type"
    status, _ = post(hostile, "/v1/completions", {"prompt": "hi", "max_tokens": 1}, "application/json; charset=utf-8")
    assert status == 200


# --- floods: gRPC's limits, checked before tokenizing


def test_list_message_and_text_floods_are_refused_before_work(hostile):
    engine = hostile.state.engine
    max_chars = hostile.state.options.limits.chars(engine.info.max_context)
    floods = [
        ("/v1/completions", {"prompt": ["ab"] * 100_000}, "prompt"),
        ("/v1/completions", {"prompt": [[1, 2]] * 50_000}, "prompt"),
        ("/v1/completions", {"prompt": ["ab"] * 8, "n": 64}, "n"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": ""}] * 25_000}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "u" * (max_chars + 1), "content": ""}]}, "messages"),
        ("/v1/completions", {"prompt": "a" * (max_chars + 1)}, "prompt"),
        ("/v1/completions", {"prompt": "hi", "stop": ["x"] * 5000}, "stop"),
        ("/v1/completions", {"prompt": "hi", "stop_token_ids": [1] * 20_000}, "stop_token_ids"),
        ("/v1/completions", {"prompt": "hi", "logit_bias": {str(i): 1 for i in range(5000)}}, "logit_bias"),
    ]
    before = rss_mib()
    for _ in range(3):
        for path, body, param in floods:
            status, reply = post(hostile, path, body)
            assert status == 400 and reply["error"]["param"] == param, (param, reply)
    canary(hostile)
    grown = rss_mib() - before
    assert grown < 400, f"RSS grew by {grown:.0f} MiB over the floods"  # the issue saw +2 GB for one


# --- event streams nobody reads


def small_send_buffer(server, s: socket.socket) -> None:
    """Shrink the server's kernel send buffer for this connection, so a non-reader fills it in a few
    tokens instead of megabytes (the drop itself is the product's; this only makes it quick to reach)."""
    mine = s.getsockname()

    def found():
        for transport in list(server.http.gate.by_transport):
            if transport.get_extra_info("peername") == mine:
                return transport
        return None

    assert wait_for(lambda: found() is not None, 10)
    found().get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


@pytest.mark.slow
def test_an_unread_event_stream_is_dropped_logged_and_counted(hostile, caplog):
    body = json.dumps(
        {"prompt": "Count: 1, 2, 3,", "max_tokens": 2000, "n": 4, "logprobs": 5, "stream": True, "seed": 3}
    ).encode()
    head = {"Host": "x", "Content-Type": "application/json", "Content-Length": str(len(body))}
    with caplog.at_level("INFO", logger="seedstream.server.http"):
        s = connect(hostile, rcvbuf=4096)
        try:
            small_send_buffer(hostile, s)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\n" + _headers(head) + body)  # then never reads
            assert wait_for(lambda: hostile.http.dropped >= 1, 120), "the stream was never dropped"
        finally:
            s.close()
        assert wait_for(lambda: hostile.state.in_flight == 0 and hostile.state.engine.load()["running"] == 0, 30)
    assert any("status=dropped" in r.getMessage() for r in caplog.records)
    text = hostile.metrics.render().decode()
    assert 'seedstream_requests_ended_total{outcome="dropped",rpc="http.completions"}' in text
    canary(hostile)
