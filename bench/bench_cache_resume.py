"""Prefix cache and resumed streams, in one run, through a real server on a loopback port.

1. Chat with a shared system prompt (~500 tokens): time to first token with the prefix cache
   cold (emptied before each request) and warm (the system prompt cached by an earlier request),
   each request with its own user message.
2. Resume cost: the time to continue a stream from token k (resume_token_ids = its first k
   tokens: one prefill of prompt + k, each token checked) beside the time to generate those k
   tokens again, and a check that the continuation equals the uninterrupted stream.

    python bench/bench_cache_resume.py            # 5 requests per cache state, k = 64
    python bench/bench_cache_resume.py --quick    # 2 requests, k = 16: a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time

SYSTEM = (
    "You are a meticulous assistant for a public library. " * 3
    + "Rules: "
    + " ".join(
        f"Rule {i}: answer politely, cite the shelf number, and never invent a book title that is not in the catalogue."
        for i in range(1, 21)
    )
)
QUESTIONS = [
    "Where are the atlases?",
    "Do you have books on bees?",
    "When do you open on Sunday?",
    "Can I renew a loan online?",
    "Is there a quiet room?",
    "Where is poetry?",
    "Do you lend maps?",
    "Are there chess sets?",
]


class LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 1800.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def ttft(client, messages) -> tuple[float, int]:
    """Seconds to the first streamed token, and the prompt positions the server took from its cache."""
    start = time.perf_counter()
    with client.generate_stream(messages=messages, seed=1, max_new_tokens=1) as stream:
        first = next(stream)
    return time.perf_counter() - start, first.cached_tokens


def chat_ttft(client, engine, requests: int) -> tuple[list[float], list[float], int]:
    cold, warm, cached = [], [], 0
    for i in range(requests):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        engine.prefix_cache.clear()  # idle between requests: the next one finds nothing
        cold.append(ttft(client, messages)[0])
        other = [messages[0], {"role": "user", "content": QUESTIONS[(i + 1) % len(QUESTIONS)] + " Thanks."}]
        seconds, cached = ttft(client, other)  # the system prompt is cached by the cold request
        warm.append(seconds)
    return cold, warm, cached


def resume_cost(client, k: int) -> tuple[float, float, bool]:
    """(seconds to stream k tokens from scratch, seconds to the first token after resuming at k, equal?)"""
    args = dict(
        prompt="Tell me a long story about a lighthouse keeper and a storm.",
        seed=7,
        temperature=0.9,
        top_p=0.95,
        max_new_tokens=k + 8,
        ignore_eos=True,
    )
    full = client.generate(**args)
    with client.generate_stream(**args) as stream:
        start = time.perf_counter()
        head = [next(stream) for _ in range(k)]
        regenerate = time.perf_counter() - start
    start = time.perf_counter()
    with client.generate_stream(**args, resume_token_ids=[t for c in head for t in c.token_ids], resume=None) as stream:
        rest = [next(stream)]
        resumed = time.perf_counter() - start
        rest += list(stream)
    joined = tuple(t for c in head + rest for t in c.token_ids)
    return regenerate, resumed, joined == full.token_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5, help="chat requests per cache state (default 5)")
    parser.add_argument("--resume-at", type=int, default=64, help="k: tokens already held (default 64)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="2 requests, k = 16")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.resume_at = 2, 16

    import torch

    from seedstream.client import Client
    from seedstream.server.app import SeedstreamServer
    from seedstream.server.engine import Engine, EngineConfig
    from seedstream.server.engine.loader import load_weights

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine(load_weights(None, progress=lambda msg: None), EngineConfig())
    system_tokens = len(engine.render_chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "x"}]))
    loop = LoopThread()
    loop.run(engine.start())
    server = SeedstreamServer(engine, host="127.0.0.1", port=0)
    loop.run(server.start())
    try:
        with Client(server.address, timeout=1800) as client:
            ttft(client, [{"role": "user", "content": "Hi"}])  # warm up
            cold, warm, cached = chat_ttft(client, engine, args.requests)
            regenerate, resumed, equal = resume_cost(client, args.resume_at)
    finally:
        loop.run(server.shutdown(5.0, stop_engine=True))
        loop.close()

    c, w = statistics.median(cold), statistics.median(warm)
    print(
        f"\nchat, system prompt + question = about {system_tokens} tokens, {args.requests} requests per state, "
        f"{torch.get_num_threads()} torch threads; median time to first token"
    )
    print("\n| prefix cache | TTFT (ms) | vs cold |\n|---|---|---|")
    print(f"| cold | {c * 1e3:.0f} | 1.00x |")
    print(f"| warm ({cached} prompt positions from the cache) | {w * 1e3:.0f} | {c / w:.2f}x |")
    print(
        f"\nresume at k = {args.resume_at}: first token after resuming {resumed * 1e3:.0f} ms, streaming the "
        f"{args.resume_at} tokens again {regenerate * 1e3:.0f} ms ({regenerate / resumed:.1f}x); "
        f"continuation equals the uninterrupted stream: {equal}"
    )


if __name__ == "__main__":
    main()
