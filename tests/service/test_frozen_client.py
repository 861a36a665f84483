"""A GenerateStream client frozen mid-stream (SIGSTOP: its kernel still ACKs TCP, its HTTP/2 stack answers
nothing) is dropped by keepalive within about keepalive time + timeout, its slots freed and its end counted.

Before the fix the server waited grpc-core's generic 60 s ping timeout after the unanswered keepalive ping
(keepalive_time + 60 s; see server/rpc/limits.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from svc_helpers import ROOT, idle, start_server, wait_for

KEEPALIVE_S = 5.0  # time and timeout alike: the slot should be free ~10 s after the freeze
FREED_WITHIN_S = 45.0  # a wide margin under the 65 s the old behaviour took

# Starts a stream whose first message (300 prompt tokens x 20 alternatives, ~100 KB) overflows a window kept
# small (no BDP probing), reads that one message, says so, and waits to be frozen.
CLIENT = r"""
import sys, time, grpc
from seedstream.v1 import textgen_pb2 as pb, textgen_pb2_grpc
channel = grpc.insecure_channel(sys.argv[1], options=[("grpc.http2.bdp_probe", 0)])
request = pb.GenerateRequest(prompt="one two three " * 100, max_new_tokens=4000, n=4, top_logprobs=20,
                             echo_prompt_logprobs=True, seed=5, ignore_eos=True)
stream = textgen_pb2_grpc.TextGenerationStub(channel).GenerateStream(request)
next(stream)
print("reading", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def keepalive_server(loop_thread, engine):
    from seedstream.server.rpc.hardening import Security
    from seedstream.server.rpc.limits import ConnectionLimits
    from seedstream.server.service.metrics import ServiceMetrics

    limits = ConnectionLimits(keepalive_time=KEEPALIVE_S, keepalive_timeout=KEEPALIVE_S)
    srv = start_server(loop_thread, engine, security=Security(connection_limits=limits), metrics=ServiceMetrics())
    yield srv
    loop_thread.run(srv.shutdown(5.0, stop_engine=False))


@pytest.mark.slow
def test_a_frozen_client_is_dropped_by_keepalive(keepalive_server, engine):
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, keepalive_server.address], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "reading", "the stream never started"
        os.kill(client.pid, signal.SIGSTOP)
        freed = wait_for(lambda: idle(engine) and keepalive_server.state.in_flight == 0, FREED_WITHIN_S, 0.1)
        assert freed, f"a frozen client still held its slots {FREED_WITHIN_S:g} s after it froze"
    finally:
        client.kill()
        client.wait(30)
    text = keepalive_server.metrics.render().decode()
    assert 'seedstream_requests_ended_total{outcome="cancel",rpc="GenerateStream"} 1.0' in text, text
