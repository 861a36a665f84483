"""Speculative decoding over real gRPC: the same streams, receipts and engine_version as a server
without it, and GetModelInfo's and /metrics' counts of drafted and kept tokens."""

from __future__ import annotations

import pytest
from svc_helpers import start_server

from seedstream.client import Client

CODE = "def area(w, h):\n    return w * h\n\ndef volume(w, h, d):\n    return area(w, h) * d\n"
CASES = [
    dict(prompt="Rewrite this code with a docstring for each function:\n" + CODE, temperature=0.0, seed=1),
    dict(
        messages=[{"role": "user", "content": "Repeat three times: the cat sat on the mat."}],
        temperature=0.8,
        top_k=50,
        top_p=0.9,
        seed=7,
        n=2,
        top_logprobs=2,
    ),
]


@pytest.fixture(scope="module")
def speculating(loop_thread):
    """A server whose engine drafts up to 6 tokens per step, with metrics."""
    from seedstream.server.engine import EngineConfig, load_engine
    from seedstream.server.service.metrics import ServiceMetrics

    engine = load_engine(EngineConfig(speculative_tokens=6))
    loop_thread.run(engine.start())
    metrics = ServiceMetrics()
    srv = start_server(loop_thread, engine, metrics=metrics)
    yield srv, metrics
    loop_thread.run(srv.shutdown(5.0))


def test_speculation_over_grpc_changes_no_stream_or_receipt(client, speculating):
    srv, metrics = speculating
    with Client(srv.address, timeout=120) as fast:
        info = fast.model_info()
        assert info.engine_version == client.model_info().engine_version  # not part of the promise's key
        assert info.speculative_tokens == 6 and info.speculative_draft_tokens == 0
        for case in CASES:
            want = client.generate(max_new_tokens=48, **case)
            got = fast.generate(max_new_tokens=48, **case)
            assert got.token_ids == want.token_ids and got.logprobs == want.logprobs and got.text == want.text
            assert got.receipt.digest == want.receipt.digest
            assert [s.token_ids for s in got.samples] == [s.token_ids for s in want.samples]
            streamed = list(fast.generate_stream(max_new_tokens=48, **case))
            assert [t for c in streamed if c.sample_index == 0 for t in c.token_ids] == list(want.token_ids)
        after = fast.model_info()
    assert 0 < after.speculative_accepted_tokens <= after.speculative_draft_tokens
    text = metrics.render().decode()
    assert f"seedstream_speculative_accepted_tokens_total {float(after.speculative_accepted_tokens)}" in text


def test_a_resumed_stream_speculates_from_its_resumed_tokens(client, speculating):
    """Resuming on a speculating server: the continuation equals the uninterrupted stream of a server
    without speculation."""
    srv, _ = speculating
    case = dict(CASES[0], max_new_tokens=40)
    want = client.generate(**case).token_ids
    with Client(srv.address, timeout=120) as fast:
        rest = fast.generate(resume_token_ids=want[:12], **case)
    assert list(want[:12]) + list(rest.token_ids) == list(want)
