"""Client-side load balancing: gRPC's round_robin over three real servers on loopback ports.

The three servers share one engine (so they are replicas of one build by construction);
each counts its own requests in its own metrics registry, which tells where calls went.
"""

from __future__ import annotations

import asyncio

import pytest
from svc_helpers import start_server

from seedstream.client import AsyncClient, Client, balancing

pytest.importorskip("prometheus_client")

REQUEST = dict(prompt_token_ids=[504, 3575, 282], seed=9, temperature=0.8, max_new_tokens=3, ignore_eos=True)


@pytest.fixture
def replicas(loop_thread, engine):
    from seedstream.server.service.metrics import ServiceMetrics

    servers = [start_server(loop_thread, engine, metrics=ServiceMetrics()) for _ in range(3)]
    yield servers
    for srv in servers:
        if not srv.state.draining:
            loop_thread.run(srv.shutdown(2.0, stop_engine=False))


def served(srv, rpc: str = "Generate") -> int:
    value = srv.metrics.registry.get_sample_value("seedstream_requests_total", {"rpc": rpc, "code": "OK"})
    return int(value or 0)


def addresses(servers) -> list[str]:
    return [f"127.0.0.1:{srv.port}" for srv in servers]


def test_round_robin_spreads_calls_over_every_replica_with_the_same_tokens(replicas):
    results = []
    with Client(addresses(replicas), timeout=60) as client:
        # round_robin sends each call to the next ready connection: every replica gets some
        # (the bound leaves room for connections that become ready after the first calls).
        while len(results) < 30 and not all(served(s) > 0 for s in replicas):
            results.append(client.generate(**REQUEST))
    assert all(served(s) > 0 for s in replicas)
    assert sum(served(s) for s in replicas) == len(results)
    assert {r.token_ids for r in results} == {results[0].token_ids}
    assert {r.receipt.digest for r in results} == {results[0].receipt.digest}


def test_pick_first_on_the_same_target_stays_on_one_replica(replicas):
    target = "ipv4:" + ",".join(addresses(replicas))
    with Client(target, load_balancing="pick_first", timeout=60) as client:
        for _ in range(6):
            client.generate(**REQUEST)
    assert sorted(served(s) for s in replicas) == [0, 0, 6]


def test_async_client_round_robin_and_a_stopped_replica_is_skipped(replicas, loop_thread):
    loop_thread.run(replicas[0].shutdown(0.5, stop_engine=False))

    async def run():
        async with AsyncClient(addresses(replicas), timeout=60, max_attempts=3) as client:
            return [await client.generate(**REQUEST) for _ in range(8)]

    results = asyncio.run(run())
    assert len({r.token_ids for r in results}) == 1
    assert served(replicas[0]) == 0
    assert served(replicas[1]) > 0 and served(replicas[2]) > 0
    assert served(replicas[1]) + served(replicas[2]) == 8


def test_targets_and_options_are_checked():
    assert balancing.channel_target(["127.0.0.1:1", "127.0.0.2:2"]) == ("ipv4:127.0.0.1:1,127.0.0.2:2", True)
    assert balancing.channel_target(["[::1]:5", "::2:6"]) == ("ipv6:[::1]:5,[::2]:6", True)
    assert balancing.channel_target("dns:///svc.ns:50051") == ("dns:///svc.ns:50051", False)
    with pytest.raises(ValueError, match="dns:///NAME:PORT"):
        balancing.channel_target(["localhost:50051"])
    with pytest.raises(ValueError, match="one family"):
        balancing.channel_target(["127.0.0.1:1", "[::1]:2"])
    with pytest.raises(ValueError, match="empty"):
        balancing.channel_target([])
    with pytest.raises(ValueError, match="load_balancing='grpclb'"):
        Client("localhost:1", load_balancing="grpclb")
    with pytest.raises(ValueError, match=r"max_attempts=9: allowed \[1, 5\]"):
        Client("localhost:1", max_attempts=9)
