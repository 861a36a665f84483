"""Three replicas behind nginx (Debian's package, deploy/nginx/seedstream.conf) on loopback ports.

One test, in phases, because starting three servers is the cost: every replica gives the
same seeded tokens and receipts, directly and through nginx; a replica killed with SIGKILL
under load loses no unary request (its requests in flight get UNAVAILABLE from nginx, and
the client's gRPC retry policy sends them again); and nginx's passive health check stops
sending to the dead replica.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import threading
import urllib.request

import pytest
import replicas as deploy  # scripts/replicas.py, on pytest's `pythonpath` (pyproject.toml)

from seedstream.client import Client, UnavailableError

pytestmark = pytest.mark.slow

SEEDS = (11, 22, 33)
REQUEST = dict(
    prompt="The three rules of a good deployment are", temperature=0.9, top_p=0.95, max_new_tokens=6, ignore_eos=True
)
# Small batches and one torch thread each: three replicas share a small CI machine.
SERVE_ARGS = ("--max-batch-size", "2", "--max-queue", "16", "--threads", "1")


def in_flight(replica) -> float:
    with urllib.request.urlopen(replica.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    return float(re.search(r"^seedstream_requests_in_flight (\S+)$", text, re.M).group(1))


def signature(result):
    return result.token_ids, result.receipt.digest


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if deploy.find_nginx() is None:
        pytest.skip(
            "nginx is not installed (Debian: apt-get install nginx-light); scripts/test.sh installs it when apt works"
        )
    workdir = tmp_path_factory.mktemp("nginx")
    replicas = deploy.start_replicas(workdir, 3, SERVE_ARGS)
    # A long fail_timeout: once nginx saw the dead replica fail, it must not try it again in this test.
    nginx = deploy.Nginx(workdir, [r.target for r in replicas], fail_timeout="300s")
    try:
        nginx.start()
        yield replicas, nginx
    finally:
        nginx.stop()
        for r in replicas:
            r.stop(30)


def test_replicas_behind_nginx(cluster):
    replicas, nginx = cluster

    # 1. The same seeded request gives the same tokens and receipt on every replica.
    reference = {}
    for seed in SEEDS:
        per_replica = set()
        for r in replicas:
            with Client(r.target, timeout=120) as client:
                per_replica.add(signature(client.generate(seed=seed, **REQUEST)))
        assert len(per_replica) == 1, f"seed {seed}: replicas disagree"
        reference[seed] = per_replica.pop()

    # ... and through nginx, which spreads calls over all three.
    with Client(nginx.target, timeout=120) as client:
        for i in range(5):
            result = client.generate(seed=SEEDS[0], metadata={"x-request-id": f"rr-{i}"}, **REQUEST)
            assert signature(result) == reference[SEEDS[0]]
    used = {u for e in nginx.access_log() if e["request_id"].startswith("rr-") for u in e["upstreams"]}
    assert used == {r.target for r in replicas}

    # 2. SIGKILL one replica while it serves: no unary request is lost, none changes its tokens.
    victim, survivors = replicas[0], replicas[1:]
    done = []
    errors = []
    lock = threading.Lock()

    def one(i: int):
        seed = SEEDS[i % len(SEEDS)]
        # gRPC's own retry covers calls refused before any response; a call nginx already answered with
        # 502 (its replica died mid-call) is committed, so the caller resends it once more: the same
        # seeded request, hence the same tokens (docs/production.md, Several replicas).
        with Client(nginx.target, timeout=120, max_attempts=3) as client:
            for attempt in range(2):
                try:
                    result = client.generate(seed=seed, metadata={"x-request-id": f"load-{i}"}, **REQUEST)
                    break
                except UnavailableError as exc:
                    if attempt == 1:
                        with lock:
                            errors.append((i, repr(exc)))
                        return
                except Exception as exc:  # counted, not raised: every request must be accounted for
                    with lock:
                        errors.append((i, repr(exc)))
                    return
        with lock:
            done.append((seed, signature(result)))

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(one, i) for i in range(12)]
        # Kill it while it is serving a request of this load.
        assert deploy_wait(lambda: in_flight(victim) >= 1 and len(done) >= 2, timeout=120)
        victim.kill()
        concurrent.futures.wait(futures)

    assert errors == []
    assert len(done) == 12
    assert all(sig == reference[seed] for seed, sig in done)
    # nginx streams gRPC request bodies (no buffering), so it cannot pass a request already sent to
    # the killed replica to another: it answers 502 (UNAVAILABLE), and the client's retry succeeds.
    load = nginx.access_log()
    cut = [
        e
        for e in load
        if e["request_id"].startswith("load-") and e["upstreams"] == [victim.target] and e["status"] == "502"
    ]
    assert cut, "the killed replica held a request of the load"
    for e in cut:
        retried = [x for x in load if x["request_id"] == e["request_id"] and x["status"] == "200"]
        assert len(retried) == 1 and retried[0]["upstreams"][-1] in {r.target for r in survivors}

    # 3. Passive health check: after the failure, nginx sends nothing more to the dead replica.
    with Client(nginx.target, timeout=120, max_attempts=3) as client:
        for i in range(4):
            assert (
                signature(client.generate(seed=SEEDS[1], metadata={"x-request-id": f"after-{i}"}, **REQUEST))
                == reference[SEEDS[1]]
            )
    after = [e for e in nginx.access_log() if e["request_id"].startswith("after-")]
    assert len(after) == 4
    assert all(victim.target not in e["upstreams"] for e in after)
    assert {e["upstreams"][0] for e in after} == {r.target for r in survivors}

    # The replicas' JSON request logs: one object per request, with its seed and token counts.
    lines = [json.loads(line) for line in survivors[0].log_path.read_text().splitlines() if line.startswith("{")]
    generated = [e for e in lines if e.get("rpc") == "Generate" and e.get("status") == "OK"]
    assert generated and all(e["seed"] in SEEDS and e["completion_tokens"] == 6 for e in generated)


def deploy_wait(predicate, timeout: float, interval: float = 0.02) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
