"""Soak: a mixed workload at the server's capacity for a bounded time, then the same behind nginx
while one replica is killed (SIGKILL) and restarted. Not a test: it reports figures.

    python bench/soak.py --duration 600 --mode both --out soak.json     # the full run (2 x 10 min)
    nice -n 10 python bench/soak.py --duration 30 --mode both            # a quick proof that it works

Workload (weights in MIX): unary generate, streamed generate, score, streams cancelled after a
few chunks, and bad input (out-of-range fields, unknown token ids). Every generation and score
uses one of a fixed pool of requests whose solo result (one at a time on an idle server) is taken
first; every soak result is compared with it (0 mismatches expected). Reported: throughput,
p50/p99 latency by kind, status codes by kind, unexpected errors, the replicas' RSS after warm-up
and at the end (bound: RSS_BOUND), and the server-side request counters from /metrics.

What counts as expected: each kind's code in EXPECTED, nothing else, with one exception. The client
retries RESOURCE_EXHAUSTED itself (max_retries, backoff with jitter), so one that reaches the soak
survived those retries: unexpected, reported as `overloaded_after_retries` (with retries spread by
round-robin over the replicas it should be rare). In the nginx phase, a stream the replica's SIGKILL cuts ends with INTERNAL
(nginx resets the HTTP/2 stream: RST_STREAM); a streamed generation is then sent again (same seed, same
tokens), but a stream of the cancel kind has nothing to redo. Such a cut is expected only when it
arrives within KILL_WINDOW_S of the kill (`CUT_BY_KILL`); outside that window it is unexpected.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import re
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import replicas as deploy  # noqa: E402  (scripts/replicas.py)

from seedstream.client import AsyncClient  # noqa: E402
from seedstream.client.errors import SeedstreamError, UnavailableError  # noqa: E402

MIX = {"generate": 30, "stream": 30, "score": 15, "cancel": 15, "bad": 10}
EXPECTED = {"generate": "OK", "stream": "OK", "score": "OK", "cancel": "CANCELLED", "bad": "INVALID_ARGUMENT"}
RSS_BOUND = (0.25, 256 * 2**20)  # growth allowed after warm-up: 25 % or 256 MiB, whichever is larger
OVERLOAD_RETRIES = 2  # the client's max_retries on RESOURCE_EXHAUSTED (its default, said here once)
# Seconds after the SIGKILL within which a stream cut (INTERNAL, RST_STREAM) counts as the kill's doing.
# The kernel resets the dead replica's connections at once and nginx resets the streams on them, so the
# error reaches the client well within this, even on a loaded 2-core machine; later cuts are something else.
KILL_WINDOW_S = 5.0
CUT_BY_KILL = "CUT_BY_KILL"  # the code recorded for a stream cut inside the kill window (expected)
PROMPTS = [
    "Once upon a time",
    "The capital of France is",
    "Write a haiku about rain.",
    "def fibonacci(n):",
    "Three reasons to learn Rust:",
    "In 1969, the first",
    "My favourite recipe starts with",
    "The weather today is",
]
BAD = [
    dict(prompt="x", temperature=-1.0),
    dict(prompt="x", top_p=1.5),
    dict(prompt="x", presence_penalty=5.0),
    dict(prompt_token_ids=[10**8]),
]
SERVE_SINGLE = ["--max-batch-size", "8", "--max-queue", "32", "--threads", "2"]
SERVE_REPLICA = ["--max-batch-size", "4", "--max-queue", "16", "--threads", "1"]


def pool(size: int) -> list[dict]:
    """Generation requests with known seeds; exact lengths so solo and soak runs do the same work."""
    rng = random.Random(1234)
    return [
        dict(
            prompt=PROMPTS[i % len(PROMPTS)],
            seed=1000 + i,
            temperature=rng.choice([0.0, 0.7, 1.0]),
            top_p=rng.choice([0.9, 1.0]),
            max_new_tokens=rng.randint(4, 24),
            ignore_eos=True,
        )
        for i in range(size)
    ]


SCORE_POOL = [[(p, " and then"), (p, " is")] for p in PROMPTS[:4]]


class Stats:
    def __init__(self):
        self.codes = collections.Counter()  # (kind, code)
        self.latency = collections.defaultdict(list)  # kind -> seconds of requests that ended as expected
        self.tokens = 0
        self.checked = 0
        self.mismatches = 0
        self.stream_retries = 0  # streams sent again after a replica died under them
        self.kill_window: tuple[float, float] | None = None  # monotonic (from, to) around the SIGKILL
        self.events: list[str] = []

    def in_kill_window(self, when: float) -> bool:
        return self.kill_window is not None and self.kill_window[0] <= when <= self.kill_window[1]

    def check(self, kind: str, index: int, expected: tuple, got: tuple) -> None:
        self.checked += 1
        if got != expected:
            self.mismatches += 1
            first = next((k for k, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
            self.events.append(
                f"MISMATCH {kind} pool[{index}]: {len(got)} items vs {len(expected)} solo, first difference at {first}"
            )

    def add(self, kind: str, code: str, seconds: float) -> None:
        self.codes[(kind, code)] += 1
        if code == EXPECTED[kind]:
            self.latency[kind].append(seconds)

    def unexpected(self) -> dict[str, int]:
        return {f"{k}:{c}": n for (k, c), n in self.codes.items() if c not in (EXPECTED[k], CUT_BY_KILL)}

    def count(self, code: str) -> int:
        return sum(n for (_, c), n in self.codes.items() if c == code)


async def solo_references(client, gens: list[dict]) -> tuple[list, list]:
    """Each pooled request alone, one after another (the references)."""
    generated = [(await client.generate(**g)).token_ids for g in gens]
    scored = [tuple(r.logprobs for r in await client.score(pairs)) for pairs in SCORE_POOL]
    return generated, scored


def stream_reset(exc: SeedstreamError) -> bool:
    """Through nginx, the HTTP/2 stream reset (INTERNAL, RST_STREAM) when the replica vanished mid-stream."""
    return exc.code is not None and exc.code.name == "INTERNAL" and "RST_STREAM" in str(exc)


def cut_by_dying_replica(exc: SeedstreamError) -> bool:
    """UNAVAILABLE, or the stream reset nginx sends when the replica vanished mid-stream."""
    return isinstance(exc, UnavailableError) or stream_reset(exc)


async def stream_with_retry(client, request: dict, stats: Stats) -> tuple[int, ...]:
    """A whole stream; one cut by a dying replica is sent again from the start: the same seed gives
    the same tokens, so the caller sees one complete, unchanged stream."""
    for attempt in range(3):
        ids: tuple[int, ...] = ()
        try:
            async with client.generate_stream(**request) as stream:
                async for chunk in stream:
                    ids += tuple(chunk.token_ids)
            return ids
        except SeedstreamError as exc:
            if attempt == 2 or not cut_by_dying_replica(exc):
                raise
            stats.stream_retries += 1
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


async def one_request(client, kind: str, rng: random.Random, gens, refs, stats: Stats) -> None:
    started = time.monotonic()
    code = "OK"
    try:
        if kind in ("generate", "stream"):
            i = rng.randrange(len(gens))
            if kind == "generate":
                ids = (await client.generate(**gens[i])).token_ids
            else:
                ids = await stream_with_retry(client, gens[i], stats)
            stats.tokens += len(ids)
            stats.check(kind, i, refs[0][i], ids)
        elif kind == "score":
            i = rng.randrange(len(SCORE_POOL))
            got = tuple(r.logprobs for r in await client.score(SCORE_POOL[i]))
            stats.check(kind, i, refs[1][i], got)
        elif kind == "cancel":
            async with client.generate_stream(**dict(gens[rng.randrange(len(gens))], max_new_tokens=64)) as stream:
                wanted = rng.randint(1, 4)
                async for _ in stream:
                    wanted -= 1
                    if wanted == 0:
                        break  # leaving the block cancels the call; the server frees the slot
            code = "CANCELLED" if wanted == 0 else "OK"
        else:
            await client.generate(max_new_tokens=4, **rng.choice(BAD))
    except SeedstreamError as exc:
        code = exc.code.name if exc.code is not None else "LOCAL"
        if kind in ("stream", "cancel") and stream_reset(exc) and stats.in_kill_window(time.monotonic()):
            code = CUT_BY_KILL
        if code != EXPECTED[kind] and len(stats.events) < 40:
            stats.events.append(f"{time.strftime('%H:%M:%S')} {kind}: {code}: {str(exc)[:160]}")
    except Exception as exc:  # counted, never fatal: the soak must report, not crash
        code = type(exc).__name__
    stats.add(kind, code, time.monotonic() - started)


async def drive(target: str, seconds: float, concurrency: int, gens, stats: Stats, warm, chaos=None) -> float:
    """Solo references, then `concurrency` workers, each sending one request after another until time is up."""
    kinds, weights = zip(*MIX.items())
    # max_attempts: gRPC retries UNAVAILABLE (a dead replica); max_retries: the client retries RESOURCE_EXHAUSTED.
    async with AsyncClient(target, timeout=300, max_attempts=3, max_retries=OVERLOAD_RETRIES) as client:
        refs = await solo_references(client, gens)
        warm()  # after the warm-up: the RSS baseline
        deadline = time.monotonic() + seconds
        started = time.monotonic()

        async def worker(n: int) -> None:
            rng = random.Random(n)
            while time.monotonic() < deadline:
                await one_request(client, rng.choices(kinds, weights)[0], rng, gens, refs, stats)

        tasks = [asyncio.ensure_future(worker(n)) for n in range(concurrency)]
        if chaos is not None:
            tasks.append(asyncio.ensure_future(chaos(seconds)))
        await asyncio.gather(*tasks)
        return time.monotonic() - started


def metrics_counts(url: str) -> dict[str, int]:
    """Server-side seedstream_requests_total as {"rpc:code": n}."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    found = re.findall(r'^seedstream_requests_total\{code="(\w+)",rpc="(\w+)"\} (\S+)$', text, re.M)
    return {f"{rpc}:{code}": int(float(v)) for code, rpc, v in found}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def summary(name: str, stats: Stats, elapsed: float, rss: dict, server: dict) -> dict:
    done = sum(stats.codes.values())
    report = {
        "phase": name,
        "seconds": round(elapsed, 1),
        "requests": done,
        "requests_per_s": round(done / elapsed, 2),
        "generated_tokens_per_s": round(stats.tokens / elapsed, 1),
        "latency_s": {
            k: {"n": len(v), "p50": round(percentile(v, 0.5), 3), "p99": round(percentile(v, 0.99), 3)}
            for k, v in sorted(stats.latency.items())
        },
        "codes": {f"{k}:{c}": n for (k, c), n in sorted(stats.codes.items())},
        "unexpected": stats.unexpected(),
        "overloaded_after_retries": stats.count("RESOURCE_EXHAUSTED"),
        "streams_cut_by_the_kill": stats.count(CUT_BY_KILL),
        "checked_against_solo": stats.checked,
        "mismatches": stats.mismatches,
        "streams_resent_after_a_replica_died": stats.stream_retries,
        "rss_mib": {k: [round(a / 2**20), round(b / 2**20)] for k, (a, b) in rss.items()},
        "rss_within_bound": all(b - a <= max(RSS_BOUND[0] * a, RSS_BOUND[1]) for a, b in rss.values() if a and b),
        "server_counts": server,
        "events": stats.events,
    }
    print(json.dumps(report, indent=2), flush=True)
    return report


def run_single(args, workdir: Path) -> dict:
    (replica,) = deploy.start_replicas(workdir, 1, args.serve_args or SERVE_SINGLE)
    try:
        stats = Stats()
        concurrency = args.concurrency or 2 * _flag(args.serve_args or SERVE_SINGLE, "--max-batch-size")
        rss_start = []
        elapsed = asyncio.run(
            drive(
                replica.target,
                args.duration,
                concurrency,
                pool(args.pool),
                stats,
                lambda: rss_start.append(replica.rss_bytes()),
            )
        )
        rss = {"replica-0": (rss_start[0], replica.rss_bytes())}
        return summary("single server", stats, elapsed, rss, metrics_counts(replica.metrics_url))
    finally:
        replica.stop()


def run_nginx(args, workdir: Path) -> dict:
    serve = args.serve_args or SERVE_REPLICA
    replicas = deploy.start_replicas(workdir, args.replicas, serve)
    nginx = deploy.Nginx(workdir, [r.target for r in replicas])
    stats = Stats()

    async def chaos(seconds: float) -> None:
        """SIGKILL replica 0 a third of the way in, restart it, let it rejoin."""
        await asyncio.sleep(seconds / 3)
        victim = replicas[0]
        killed_at = time.monotonic()
        victim.kill()
        stats.kill_window = (killed_at, time.monotonic() + KILL_WINDOW_S)
        stats.events.append(f"{time.strftime('%H:%M:%S')} SIGKILL replica 0 ({victim.target})")
        await asyncio.sleep(min(10.0, seconds / 6))
        victim.start()
        await asyncio.to_thread(victim.wait_serving, 300)
        stats.events.append(f"{time.strftime('%H:%M:%S')} replica 0 restarted and SERVING")

    try:
        nginx.start()
        concurrency = args.concurrency or 2 * args.replicas * _flag(serve, "--max-batch-size")
        rss_start = {}
        elapsed = asyncio.run(
            drive(
                nginx.target,
                args.duration,
                concurrency,
                pool(args.pool),
                stats,
                lambda: rss_start.update({f"replica-{r.index}": r.rss_bytes() for r in replicas}),
                chaos,
            )
        )
        # Replica 0 was restarted: its "start" is the old process; its growth is not comparable.
        rss = {k: (v, r.rss_bytes()) for (k, v), r in zip(rss_start.items(), replicas) if r.index != 0}
        server = {f"replica-{r.index}": metrics_counts(r.metrics_url) for r in replicas}
        log = nginx.access_log()
        stats.events.append(
            f"nginx: {len(log)} requests, {sum(e['status'] == '502' for e in log)} answered 502 "
            f"(retried by the client), {sum(len(e['upstreams']) > 1 for e in log)} passed to a next replica"
        )
        return summary(f"{args.replicas} replicas behind nginx, one killed and restarted", stats, elapsed, rss, server)
    finally:
        nginx.stop()
        for r in replicas:
            r.stop()


def _flag(args: list[str], name: str) -> int:
    return int(args[args.index(name) + 1]) if name in args else 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load per phase")
    parser.add_argument("--mode", choices=("single", "nginx", "both"), default="both")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--concurrency", type=int, help="concurrent clients (default: twice the batch slots)")
    parser.add_argument("--pool", type=int, default=16, help="distinct generation requests with solo references")
    parser.add_argument("--out", help="write the reports as JSON here")
    parser.add_argument("serve_args", nargs="*", help="after --: `seedstream serve` flags for every server")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the servers
    workdir = Path(tempfile.mkdtemp(prefix="seedstream-soak-"))
    reports = []
    if args.mode in ("single", "both"):
        reports.append(run_single(args, workdir))
    if args.mode in ("nginx", "both"):
        if deploy.find_nginx() is None:
            print("nginx is not installed: skipping the nginx phase (apt-get install nginx-light)", file=sys.stderr)
        else:
            reports.append(run_nginx(args, workdir))
    if args.out:
        Path(args.out).write_text(json.dumps(reports, indent=2))
    print(f"logs and nginx files: {workdir}")
    bad = any(r["mismatches"] or r["unexpected"] or not r["rss_within_bound"] for r in reports)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
