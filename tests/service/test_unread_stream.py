"""gRPC streams whose client stops reading: --max-deadline bounds the whole call, writes included, so
the stream ends at the deadline, its sequences are freed, and the end is logged once and counted."""

from __future__ import annotations

import logging

import grpc
import pytest
from svc_helpers import idle, start_server, wait_for

from seedstream.v1 import textgen_pb2 as pb
from seedstream.v1 import textgen_pb2_grpc

MAX_DEADLINE_S = 4.0


@pytest.fixture(scope="module")
def deadline_server(loop_thread, engine):
    from seedstream.server.rpc.hardening import Security
    from seedstream.server.service.inputs import RequestLimits
    from seedstream.server.service.metrics import ServiceMetrics

    security = Security(request_limits=RequestLimits(max_deadline=MAX_DEADLINE_S))
    srv = start_server(loop_thread, engine, security=security, metrics=ServiceMetrics())
    yield srv
    loop_thread.run(srv.shutdown(5.0, stop_engine=False))


@pytest.mark.slow
def test_an_unread_stream_ends_at_the_deadline_logged_and_counted(deadline_server, engine, caplog):
    # No BDP probing: the client's flow-control window stays small, so a non-reader blocks the server's writes.
    options = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 64 * 2**20)]
    # The first message echoes 300 prompt tokens with 20 alternatives each (~100 KB): past the window at once.
    request = pb.GenerateRequest(
        prompt="one two three " * 100,
        max_new_tokens=4000,
        n=4,
        top_logprobs=20,
        echo_prompt_logprobs=True,
        seed=5,
        ignore_eos=True,
    )
    with caplog.at_level(logging.INFO, logger="seedstream.server"):
        with grpc.insecure_channel(deadline_server.address, options=options) as channel:
            call = textgen_pb2_grpc.TextGenerationStub(channel).GenerateStream(request)  # never read
            assert wait_for(lambda: not idle(engine), 30), "the stream never started"
            # The deadline is 4 s; 4000 tokens x 8 samples take minutes: a wide margin either way.
            assert wait_for(lambda: idle(engine) and deadline_server.state.in_flight == 0, 90), (
                "the stream outlived its deadline"
            )
            call.cancel()
    lines = [r.getMessage() for r in caplog.records if "rpc=GenerateStream" in r.getMessage()]
    assert len(lines) == 1 and "status=DEADLINE_EXCEEDED" in lines[0], lines
    # Blocked in a write (the usual case) it is `dropped`; on a machine too slow to fill the window in
    # time it is still waiting for the engine, and is `deadline`. Either way: counted once.
    outcome = "dropped" if "dropped=client-not-reading" in lines[0] else "deadline"
    text = deadline_server.metrics.render().decode()
    assert f'seedstream_requests_ended_total{{outcome="{outcome}",rpc="GenerateStream"}} 1.0' in text
    assert 'seedstream_requests_total{code="DEADLINE_EXCEEDED",rpc="GenerateStream"} 1.0' in text
